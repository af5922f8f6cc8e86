"""Registered models and the watch cycle: find new complete checkpoints, index or link them, record it all.

All state lives in the store (``sources``, ``checkpoints``, ``checkpoint_aliases``, ``watch_runs``,
``watch_items``), so the watcher is restart-safe: a process that dies mid-cycle leaves its run marked
``running`` (the next cycle marks it ``interrupted``) and the checkpoints it had not finished are simply found
again. Each checkpoint is indexed in its own transaction and each decision is recorded in its own small
transaction, so one failure never stops or undoes the others.

Identical content is indexed once: when a new step's content hash equals an indexed checkpoint's (Pythia
publishes bit-identical steps), the step is linked to it in ``checkpoint_aliases`` instead.

Every write goes through the store's writer (``schema.writer``): from the command line one cycle holds the
file's write lock throughout; in the service each decision waits its turn in the service's write queue.
"""

import re
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from indexer.index.options import IndexOptions, IndexResult
from indexer.index.run import index_checkpoint
from indexer.math.basis import BasisMode
from indexer.watch.discover import (
    KINDS,
    Candidate,
    SourceError,
    SourceKind,
    candidates,
    changed,
    detect_kind,
    fingerprint,
)
from indexer.watch.discover import incomplete as incomplete_reason
from schema.errors import LensdbError
from schema.writer import Store, insert, insert_new, with_store

Action = Literal["indexed", "linked", "skipped", "failed"]
IndexFn = Callable[[Path, IndexOptions], IndexResult]
_EVERY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> float:
    """``10m``, ``30s``, ``2h``, ``1d`` or plain seconds → seconds."""
    m = _EVERY.match(text)
    if not m or float(m.group(1)) <= 0:
        raise LensdbError(f"cannot read the interval {text!r}; write a positive number with s, m, h or d, e.g. 10m.")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


class RegisteredSource(BaseModel):
    """A folder registered as a model to watch (a row of ``sources``)."""

    name: str
    path: str
    kind: SourceKind
    top_k: int
    basis: BasisMode
    registered_at: datetime

    @classmethod
    def from_row(cls, row: tuple) -> "RegisteredSource":
        """From (name, path, kind, top_k, basis, registered_at), the order the queries here select them in."""
        return cls(**dict(zip(cls.model_fields, row, strict=True)))


class RegisterResult(BaseModel):
    status: Literal["registered", "unchanged"]
    source: RegisteredSource
    message: str


class WatchItem(BaseModel):
    source: str
    path: str
    label: str
    step: int | None
    action: Action
    reason: str | None


class WatchReport(BaseModel):
    watch_id: int
    status: str
    error: str | None
    n_indexed: int
    n_linked: int
    n_skipped: int
    n_failed: int
    n_known: int
    items: list[WatchItem]

    @property
    def message(self) -> str:
        return (f"watch cycle {self.watch_id} {self.status}: {self.n_indexed} indexed, {self.n_linked} linked, "
                f"{self.n_skipped} skipped, {self.n_failed} failed, {self.n_known} already known")


def register_source(db: str | Path | Store, name: str, folder: str | Path, kind: SourceKind | None = None,
                    top_k: int = 50, basis: BasisMode = "folded") -> RegisterResult:
    """Register ``folder`` as model ``name`` in the store at ``db`` (or through the service's ``Store``);
    `lensdb watch` then indexes its complete checkpoints."""
    if not name.strip():
        raise LensdbError("the model name is empty; pass a NAME.")
    if "\x00" in str(folder):
        raise SourceError(f"{str(folder)!r}: a path cannot contain a NUL character.")
    path = Path(folder).expanduser().resolve()
    if kind is not None and kind not in KINDS:
        raise LensdbError(f"unknown source kind {kind!r}; use one of {', '.join(KINDS)}.")
    found_kind = kind or detect_kind(path)
    if not path.is_dir():
        raise SourceError(f"{path}: no such folder.")
    if not 1 <= top_k <= 1000:
        raise LensdbError(f"top-k must be between 1 and 1000, not {top_k}.")
    def register(store: Store) -> RegisterResult:
        with store.transaction() as tx:
            row = tx.execute("SELECT name, path, kind, top_k, basis, registered_at FROM sources WHERE name = ?",
                             [name]).fetchone()
            if row:
                have = RegisteredSource.from_row(row)
                if have.path != str(path):
                    raise LensdbError(f"model {name!r} is already registered for {have.path}; pick another name.")
                return RegisterResult(status="unchanged", source=have,
                                      message=f"{name} is already registered for {path} ({have.kind}).")
            source = RegisteredSource(name=name, path=str(path), kind=found_kind, top_k=top_k, basis=basis,
                                      registered_at=datetime.now())
            insert_new(tx, "sources", **source.model_dump())
        return RegisterResult(status="registered", source=source, message=f"registered {name}: {path} "
                              f"({found_kind}); `lensdb watch` indexes its checkpoints.")

    return with_store(db, register)


class _Cycle:
    """One watch cycle's bookkeeping in the store: the run row, one small transaction per decision."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.items: list[WatchItem] = []
        self.n_known = 0
        self.error: str | None = None
        with store.transaction() as tx:
            tx.execute("UPDATE watch_runs SET status = 'interrupted', "
                       "error = coalesce(error, 'the process ended during the cycle') WHERE status = 'running'")
            self.watch_id = insert_new(tx, "watch_runs", started_at=datetime.now(), status="running", n_indexed=0,
                                       n_linked=0, n_skipped=0, n_failed=0, n_known=0)
            self.sources = [
                (int(r[0]), RegisteredSource.from_row(r[1:]))
                for r in tx.execute("SELECT source_id, name, path, kind, top_k, basis, registered_at FROM sources "
                                    "ORDER BY name").fetchall()]
            self.known = {r[0] for r in tx.execute(
                "SELECT path FROM checkpoints UNION SELECT path FROM checkpoint_aliases").fetchall()}

    def record(self, source: RegisteredSource, c: Candidate, action: Action, reason: str | None,
               link: tuple[int, int, str] | None = None) -> None:
        """Write one decision (and, for a link, the alias) in its own transaction."""
        item = WatchItem(source=source.name, path=str(c.path), label=c.label, step=c.step, action=action,
                         reason=reason)
        with self.store.transaction() as tx:
            if link is not None:
                source_id, checkpoint_id, content_hash = link
                label = c.label
                if tx.execute("SELECT 1 FROM checkpoint_aliases WHERE source_id = ? AND label = ?",
                              [source_id, label]).fetchone():
                    label = f"{label}@{content_hash[:8]}"
                insert_new(tx, "checkpoint_aliases", source_id=source_id, label=label, step=c.step, path=str(c.path),
                           content_hash=content_hash, checkpoint_id=checkpoint_id, linked_at=datetime.now())
            insert(tx, "watch_items", watch_id=self.watch_id, decided_at=datetime.now(), **item.model_dump())
        self.items.append(item)
        if action == "failed" and self.error is None:
            self.error = f"{source.name}/{c.label}: {reason}"

    def count(self, action: Action) -> int:
        return sum(i.action == action for i in self.items)

    def finish(self, status: str | None = None) -> WatchReport:
        status = status or ("failed" if self.count("failed") else "ok")
        counts = [self.count(a) for a in ("indexed", "linked", "skipped", "failed")]
        with self.store.transaction() as tx:
            tx.execute("UPDATE watch_runs SET finished_at = ?, status = ?, error = ?, n_indexed = ?, n_linked = ?, "
                       "n_skipped = ?, n_failed = ?, n_known = ? WHERE watch_id = ?",
                       [datetime.now(), status, self.error, *counts, self.n_known, self.watch_id])
        return WatchReport(watch_id=self.watch_id, status=status, error=self.error, n_indexed=counts[0],
                           n_linked=counts[1], n_skipped=counts[2], n_failed=counts[3], n_known=self.n_known,
                           items=self.items)


def _linked_target(store: Store, content_hash: str) -> tuple[int, str, str]:
    """The indexed checkpoint holding ``content_hash``: (checkpoint_id, path, model/label)."""
    with store.transaction() as tx:
        row = tx.execute("SELECT c.checkpoint_id, c.path, m.name || '/' || c.label FROM checkpoints c "
                         "JOIN models m USING (model_id) WHERE c.content_hash = ?", [content_hash]).fetchone()
    if row is None:
        raise LensdbError(f"no indexed checkpoint has content {content_hash[:12]}; it was removed meanwhile.")
    return int(row[0]), str(row[1]), str(row[2])


def watch_cycle(db: str | Path | Store, *, settle_s: float = 60.0, look_gap_s: float = 2.0,
                index: IndexFn | None = None, only: str | None = None,
                stop: threading.Event | None = None) -> WatchReport:
    """One pass over every registered source (or only ``only``): index what is new, complete and stable.

    ``db``: the store's path (the cycle then holds its write lock throughout), or the service's ``Store``.
    ``index``: how to index one checkpoint (default: ``index_checkpoint`` into the same store; the service
    passes one that queues a job on its JobRunner and waits for it). ``stop``: when set, the cycle ends after
    the checkpoint in hand and is recorded as interrupted; the rest is found again next cycle.
    """
    return with_store(db, lambda store: _watch(store, settle_s, look_gap_s, index, only, stop))


def _watch(store: Store, settle_s: float, look_gap_s: float, index: IndexFn | None, only: str | None,
           stop: threading.Event | None) -> WatchReport:
    run: IndexFn = index or (lambda path, opts: index_checkpoint(store, path, opts))
    cycle = _Cycle(store)
    try:
        sources = [(sid, s) for sid, s in cycle.sources if only is None or s.name == only]
        if only is not None and not sources:
            raise LensdbError(f"no registered model {only!r}; `lensdb registered` lists them.")
        looked: list[tuple[int, RegisteredSource, Candidate, tuple]] = []
        for sid, source in sources:
            try:
                found = candidates(Path(source.path), source.kind)
            except (LensdbError, OSError) as err:
                cycle.record(source, Candidate(Path(source.path), source.name, None), "failed", str(err))
                continue
            for c in found:
                if str(c.path) in cycle.known:
                    cycle.n_known += 1
                    continue
                reason = incomplete_reason(c, source.kind, settle_s)
                if reason:
                    cycle.record(source, c, "skipped", reason)
                else:
                    looked.append((sid, source, c, fingerprint(c.path)))
        if looked and look_gap_s > 0:
            time.sleep(look_gap_s)
        for sid, source, c, before in looked:
            if stop is not None and stop.is_set():
                return cycle.finish("interrupted")
            moved = changed(before, fingerprint(c.path), look_gap_s) if c.path.is_dir() else "folder disappeared"
            if moved:
                cycle.record(source, c, "skipped", moved)
                continue
            opts = IndexOptions(name=source.name, top_k=source.top_k, basis=source.basis, label=c.label, step=c.step)
            try:
                result = run(c.path, opts)
                if result.status == "indexed":
                    cycle.record(source, c, "indexed", result.message)
                    continue
                checkpoint_id, path, target = _linked_target(store, result.content_hash)
                if path == str(c.path):
                    cycle.n_known += 1  # indexed meanwhile by someone else, from this very folder
                    continue
                cycle.record(source, c, "linked", f"identical content to {target}; not re-indexed",
                             link=(sid, checkpoint_id, result.content_hash))
            except LensdbError as err:
                cycle.record(source, c, "failed", str(err))
            except Exception as err:  # a bug: record it, keep going with the other checkpoints
                traceback.print_exc()
                cycle.record(source, c, "failed", f"internal error: {err!r}")
    except BaseException as err:
        cycle.error = cycle.error or str(err) or repr(err)
        cycle.finish("failed" if isinstance(err, Exception) else "interrupted")
        raise
    return cycle.finish()


def watch_loop(cycle: Callable[[], WatchReport], every_s: float, stop: threading.Event, *, once: bool = False,
               report: Callable[[WatchReport], None] = lambda r: None,
               on_error: Callable[[LensdbError], None] = lambda e: None) -> None:
    """Run ``cycle`` now and then every ``every_s`` seconds until ``stop`` is set (or once).

    A cycle that fails as a whole (the store is locked, say) is reported and tried again next time.
    """
    while not stop.is_set():
        try:
            report(cycle())
        except LensdbError as err:
            if once:
                raise
            on_error(err)
        if once or stop.wait(every_s):
            return
