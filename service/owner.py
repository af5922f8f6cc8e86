"""The one process that owns the store file while ``lensdb serve`` runs: its read-write connection, a fresh
read-only snapshot per request, the write queue every write waits in, the job runner that indexes through it,
the watcher and the warmer.

DuckDB allows one writing process per file and no reader while it writes, so the service keeps ONE
read-write connection. Every request reads through its own cursor inside a READ ONLY transaction (a
snapshot of the last commit); writes go through ``store`` (``schema.writer.Store``): one transaction at a time
on a cursor of the same connection, in the order they asked (``service.jobs.WriteQueue``). The connection is
hardened once at start (``queries.readonly.harden``: no file or network access, no extensions, bounded memory,
threads and spill space, settings locked); those settings are database-wide in DuckDB, which is what we want:
the writers write only through Python and need none of what is locked, and the bounds hold for every query.
"""

import contextlib
import secrets
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from indexer import IndexOptions, IndexResult
from indexer.model.checkpoint import read_json
from indexer.model.hub import looks_like_repo_id, resolve_cached
from indexer.watch.cycle import WatchReport, parse_every, watch_cycle, watch_loop
from queries import Lens
from queries.readonly import Limits, harden
from schema.errors import LensdbError, StoreError
from schema.runs import Merged, merge_said
from schema.writer import Store, writer
from service.allowed import permit
from service.jobs import IndexRequest, Job, JobRunner, WriteQueue
from service.pools import Pool
from service.settings import Settings


def limits(settings: Settings) -> Limits:
    """The bounds of the service's DuckDB instance, from its settings."""
    given: dict[str, Any] = {"memory_limit": settings.memory_limit, "threads": settings.threads,
                             "temp_directory": settings.temp_directory,
                             "max_temp_directory_size": settings.max_temp_directory_size}
    return Limits(**{k: v for k, v in given.items() if v not in (None, "")})


def open_owner(path: Path, bounds: Limits | None = None) -> duckdb.DuckDBPyConnection:
    """The service's one read-write connection: schema created or upgraded, then bounded and hardened (spilling
    next to the store unless ``bounds`` names a folder)."""
    if not path.parent.exists():
        raise StoreError(f"cannot create {path}: folder {path.parent} does not exist.")
    try:
        con = duckdb.connect(str(path))
    except duckdb.Error as err:
        if "lock" in str(err).lower():
            raise StoreError(f"{path} is in use by another process (DuckDB allows one writer per file); "
                             "stop it, or point this service at another --db.") from None
        raise StoreError(f"cannot open {path}: {err}") from None
    try:
        with writer(path, con):
            pass  # creates the schema in a new file, upgrades an older store
        harden(con, bounds, temp_directory=None if bounds and bounds.temp_directory else f"{path}.tmp")
    except BaseException:
        con.close()
        raise
    return con


class StoreOwner:
    """What one running service holds: settings, the owning connection, the job runner and its threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = Path(settings.db)
        self.instance = secrets.token_hex(8)  # names this process in /health and in the note beside the store
        self.con = open_owner(self.path, limits(settings))
        self.writes = WriteQueue()
        self.store = Store(self.path, self.con, gate=self.writes.turn, readers=True)  # every write of this service
        self.merged = self._merge_runs()
        self.jobs = JobRunner(self.store, after=self.warm if settings.warm else None)
        self.stop_watch = threading.Event()
        self._one_cycle = threading.Lock()  # cycles never overlap, whoever starts them
        self.watcher: threading.Thread | None = None
        if settings.watch_every:
            every = parse_every(settings.watch_every)
            self.watcher = threading.Thread(
                target=watch_loop, args=(self.watch_once, every, self.stop_watch), name="lensdb-watch", daemon=True,
                kwargs={"on_error": lambda e: print(f"lensdb: watch cycle failed: {e}", file=sys.stderr)})
            self.watcher.start()
        self.sql_pool = Pool("sql", settings.sql_workers)
        self.page_pool = Pool("page", settings.page_workers)
        self.warmer: threading.Thread | None = None
        if settings.warm:
            self.warmer = threading.Thread(target=self.warm, name="lensdb-warm", daemon=True)
            self.warmer.start()

    def _merge_runs(self) -> Merged | None:
        """Merge the sorted runs indexed while this store was served (``Store.readers``), before any request
        reads: through a Store of the same connection with no readers yet. A failure is reported, and the
        service starts with the runs as they were."""
        merged, said = merge_said(Store(self.path, self.con))
        if said:
            print(f"lensdb: {said}" + (" before serving" if merged else ""), file=sys.stderr)
        return merged

    def warm(self) -> None:
        """Load what token lookups read into memory (``Lens.warm``); a failure is reported, never raised."""
        try:
            with self.lens() as lens:
                lens.warm(self.settings.value_cache_mb)
        except (LensdbError, duckdb.Error, MemoryError) as err:  # too small a machine for value_cache_mb: say so
            print(f"lensdb: warming the store failed (lookups still work, read from disk): {err or type(err).__name__}",
                  file=sys.stderr)

    def roots(self, registered: bool = True) -> list[Path]:
        """Folders a request may name: the ``allow_dir`` settings and, with ``registered``, the registered
        models' folders (what the operator registered, or a request did inside an allowed folder)."""
        roots = list(self.settings.allow_dir)
        if registered:
            with self.lens() as lens:
                roots += [Path(s.path) for s in lens.registered()]
        return roots

    def submit_index(self, request: IndexRequest) -> Job:  # type: ignore[valid-type]
        """``POST /index``: the checkpoint and any pair-vocabulary file must lie inside the allowed folders;
        device, precision and executor come from the settings."""
        fields = request.model_dump(exclude={"checkpoint"})  # type: ignore[attr-defined]
        roots = self.roots()
        checkpoint = self._allowed_source(request.checkpoint, fields["revision"], roots, "checkpoint")  # type: ignore[attr-defined]
        if fields["base"] is not None:
            fields["base"] = self._allowed_source(fields["base"], None, roots, "base")
        elif Path(checkpoint).is_dir() and (Path(checkpoint) / "adapter_config.json").is_file():
            named = read_json(Path(checkpoint) / "adapter_config.json")  # the base a LoRA adapter names
            base = named.get("base_model_name_or_path") if isinstance(named, dict) else None
            if isinstance(base, str) and base:
                fields["base"] = self._allowed_source(base, None, roots, "the adapter's base model")
        if fields["pair_vocab"] not in ("all", "ascii", "alnum"):
            fields["pair_vocab"] = str(permit(fields["pair_vocab"], roots, "pair_vocab", folder=False))
        return self.jobs.submit(checkpoint, IndexOptions(**fields, **self.compute_settings()))

    @staticmethod
    def _allowed_source(text: str, revision: str | None, roots: list[Path], what: str) -> str:
        """A checkpoint a request names: an absolute path, or a hub id whose cached snapshot lies inside the
        allowed folders (the cache itself, or the model's folder in it, allowed by the operator)."""
        if not Path(text).is_absolute() and looks_like_repo_id(text):
            permit(str(resolve_cached(text, revision).path), roots, what)
            return text
        return str(permit(text, roots, what))

    def compute_settings(self) -> dict[str, object]:
        """The index options only the operator sets: device, precision, executor and Ray."""
        s = self.settings
        return {"device": s.index_device, "precision": s.index_precision, "executor": s.index_executor,
                "address": s.ray_address or None, "ray_workers": s.ray_workers}

    def index_via_jobs(self, path: Path, options: IndexOptions) -> IndexResult:
        """Index one checkpoint as a job on the runner (the one writer of checkpoints) and wait for it."""
        options = options.model_copy(update=self.compute_settings())
        job = self.jobs.wait(self.jobs.submit(str(path), options).id)
        if job.status != "done" or job.result is None:
            raise LensdbError(job.error or "the index job failed")
        return job.result

    def watch_once(self) -> WatchReport:
        """One watch cycle over the registered models, indexing through the job queue."""
        with self._one_cycle:
            return watch_cycle(self.store, settle_s=self.settings.watch_settle_s, index=self.index_via_jobs,
                               stop=self.stop_watch)

    def reader(self) -> Iterator[Lens]:
        """A ``Lens`` on a fresh cursor in a READ ONLY transaction, for one request (a FastAPI dependency)."""
        cur = self.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION READ ONLY")
            yield Lens(cur, self.path)
        finally:
            with contextlib.suppress(duckdb.Error):
                cur.execute("ROLLBACK")
            cur.close()

    lens = contextlib.contextmanager(reader)

    def close(self) -> None:
        self.stop_watch.set()
        if self.watcher is not None:
            self.watcher.join(60)
        self.jobs.stop()
        self.sql_pool.close()
        self.page_pool.close()
        if self.warmer is not None:
            self.warmer.join(60)
        self.con.close()
