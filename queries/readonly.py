"""Read-only SQL for users: one SELECT at a time, on a connection that cannot write or reach files, bounded in
memory, threads and spill space, cut off after a time limit and capped at a row count (datasette's model).

What is locked, and why. DuckDB's settings belong to a database *instance* (every connection to it), not to one
connection, so a reader of a store gets an instance of its own: an in-memory DuckDB that attaches the file
read-only (``open_hardened``). In it external access is off (no ``read_csv``, files, URLs, other databases),
extensions neither install nor load, ``memory_limit``, ``threads``, ``temp_directory`` and
``max_temp_directory_size`` bound what a query can take, and ``lock_configuration`` keeps every setting where it
is. The process's other DuckDB connections (``duckdb.connect()``, a user's own connection to the same file) are
other instances and keep every ability they had. Every reader of one file in one process shares one such
instance (each ``Lens`` gets its own cursor): two instances would each hold the file's lock, and POSIX drops a
process's lock on a file when *any* of its handles on that file closes, so closing one would let a writer in
under the other. The instance closes with its last reader, which releases the file.

``lensdb serve`` hardens its one read-write connection the same way (``harden``): the service's writers write
only through Python and need none of what is locked, and its limits then bound every query it runs.
"""

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from queries.rows import SqlResult
from schema.connect import check_version, open_error, quote
from schema.errors import LensdbError, StoreError

# Settings that stay locked for the life of the instance: no files, no network, no extensions.
HARDENED = {
    "enable_external_access": "false",
    "autoinstall_known_extensions": "false",
    "autoload_known_extensions": "false",
    "lock_configuration": "true",
}


def half_the_memory() -> str:
    """Half of this machine's physical memory, as a DuckDB size (the default ``memory_limit`` of readers)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "4GB"
    return f"{max(total // 2 >> 20, 256)}MB"


@dataclass(frozen=True)
class Limits:
    """What one query may take from the instance it runs in (DuckDB's database-wide settings). A query past
    ``memory_limit`` that cannot spill (DuckDB spills sorts, joins and aggregates to ``temp_directory`` first) is
    refused with a clear error; the instance keeps answering everyone else."""

    memory_limit: str = field(default_factory=half_the_memory)  # DuckDB size: 512MB, 4GB
    threads: int | None = None  # None: DuckDB's default, one per core
    temp_directory: str | None = None  # None: a private folder under the system's temporary folder
    max_temp_directory_size: str = "8GB"  # spill space a query may use before it is refused

    def statements(self, temp_directory: str) -> list[str]:
        out = [f"SET memory_limit = {quote(self.memory_limit)}",
               f"SET temp_directory = {quote(temp_directory)}",
               f"SET max_temp_directory_size = {quote(self.max_temp_directory_size)}"]
        if self.threads is not None:
            out.append(f"SET threads = {int(self.threads)}")
        return out


class SqlRefused(LensdbError):
    """The statement is not a single read-only query."""


class SqlTimeout(LensdbError):
    """The query ran past its time limit and was interrupted."""


def harden(con: duckdb.DuckDBPyConnection, limits: Limits | None = None,
           temp_directory: str | None = None) -> duckdb.DuckDBPyConnection:
    """Bound and lock down the instance ``con`` belongs to, for user SQL; after this it cannot be unlocked.
    ``temp_directory``: where it spills (default: ``limits.temp_directory``, else DuckDB's own choice)."""
    limits = limits or Limits()
    spill = temp_directory or limits.temp_directory
    bounds = limits.statements(spill) if spill else [s for s in limits.statements("") if "temp_directory =" not in s]
    # one round trip for all of them
    con.execute("; ".join([*bounds, *(f"SET {key} = {value}" for key, value in HARDENED.items())]))
    return con


class _Instance:
    """One hardened in-memory DuckDB with one store attached, shared by this process's readers of the store."""

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path = path
        self.spill = limits.temp_directory or tempfile.mkdtemp(prefix="lensdb-spill-")
        self.owns_spill = limits.temp_directory is None
        self.refs = 0
        self.con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": "false",
                                                      "autoload_known_extensions": "false"})
        try:
            try:
                self.con.execute(f"ATTACH {quote(str(path))} AS lens (READ_ONLY)")
            except duckdb.Error as err:
                raise open_error(path, err) from None
            self.con.execute("USE lens")
            check_version(self.con, path)
            try:
                harden(self.con, limits, self.spill)
            except duckdb.Error as err:
                raise StoreError(f"cannot lock down the connection to {path}: {err}") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.con.close()
        if self.owns_spill:
            shutil.rmtree(self.spill, ignore_errors=True)


_OPEN: dict[tuple[str, Limits], _Instance] = {}
_OPEN_LOCK = threading.RLock()  # re-entrant: a Lens collected mid-call gives its cursor back from here


def open_hardened(path: str | Path, limits: Limits | None = None
                  ) -> tuple[duckdb.DuckDBPyConnection, Callable[[], None]]:
    """A read-only, locked-down, bounded connection to an existing store, and the function that gives it back.

    Every call for one file (and limits) in this process shares one instance (see the module docstring); each
    gets its own cursor, so calling it again (a notebook cell run twice) or from another thread just works. The
    instance, and with it the file's lock, goes when the last connection is given back."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no lensdb store at {p}; create one with `lensdb index CHECKPOINT --db {p}`.")
    key = (str(p.resolve()), limits or Limits())
    with _OPEN_LOCK:
        inst = _OPEN.get(key)
        if inst is None:
            inst = _OPEN[key] = _Instance(p, key[1])
        inst.refs += 1
        try:
            cur = inst.con.cursor()
            cur.execute("USE lens")
        except BaseException:
            _give_back(key, inst)
            raise
    released = False

    def release() -> None:
        nonlocal released
        with _OPEN_LOCK:
            if not released:
                released = True
                cur.close()
                _give_back(key, inst)

    return cur, release


def _give_back(key: tuple[str, Limits], inst: _Instance) -> None:
    inst.refs -= 1
    if inst.refs == 0:
        _OPEN.pop(key, None)
        inst.close()


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Accept exactly one SELECT; refuse anything else with a reason."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as err:
        raise SqlRefused(_reason(err, "cannot parse the SQL: ")) from None
    if len(statements) != 1:
        raise SqlRefused(f"send exactly one statement (got {len(statements)}).")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise SqlRefused(f"only SELECT queries are allowed here, not {kind.name}. The store is read-only.")


# DuckDB's memory_limit holds for its whole instance, and DuckDB says how much memory the instance uses, not which
# query uses it. So user SQL runs one query at a time in this process (lookups and the other questions never wait
# for it), and that query is stopped once DuckDB's working memory (everything but cached table blocks, which it
# can evict) has grown by more than this share of memory_limit since it started: a single allocation can at
# most double that, which still leaves half for everyone else.
QUERY_SHARE = 4
_ONE_QUERY = threading.Lock()
_CACHED = ("BASE_TABLE", "EXTERNAL_FILE_CACHE")
_UNITS = {"": 1, "B": 1, "BYTES": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4, "KIB": 1 << 10,
          "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def size_bytes(text: str) -> int:
    """A DuckDB size (``190.7 MiB``, ``4GB``) in bytes."""
    number = text.strip().rstrip("BbIiKkMmGgTtYySsEe ")
    unit = text.strip()[len(number):].strip().upper()
    return int(float(number) * _UNITS.get(unit, 1))


def _working_memory(probe: duckdb.DuckDBPyConnection) -> int:
    row = probe.execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag NOT IN "
                        f"({', '.join(repr(t) for t in _CACHED)})").fetchone()
    return int(row[0]) if row else 0


class _MemoryWatch(threading.Thread):
    """Stops the query on ``con`` (``interrupt``) once DuckDB's working memory grew by more than ``bound`` bytes."""

    def __init__(self, con: duckdb.DuckDBPyConnection, bound: int, every_s: float = 0.01) -> None:
        super().__init__(name="lensdb-sql-memory", daemon=True)
        self.con = con
        self.bound = bound
        self.every_s = every_s
        self.probe = con.cursor()
        self.base = _working_memory(self.probe)
        self.done = threading.Event()
        self.tripped = False

    def run(self) -> None:
        try:
            while not self.done.wait(self.every_s):
                if _working_memory(self.probe) - self.base > self.bound:
                    self.tripped = True
                    self.con.interrupt()
                    return
        finally:
            self.probe.close()


def run_readonly(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int = 1000, timeout_s: float = 10.0) -> SqlResult:
    """Run one SELECT on a hardened connection; at most ``max_rows`` rows, ``truncated`` says if more. It is
    stopped after ``timeout_s`` seconds, or once it takes more than a ``QUERY_SHARE``-th of ``memory_limit``;
    it waits at most ``timeout_s`` for the user query before it (one at a time, see ``QUERY_SHARE``)."""
    check_statement(con, sql)
    if not _ONE_QUERY.acquire(timeout=timeout_s):
        raise SqlTimeout(f"other SQL queries held the store for {timeout_s:g}s (they run one at a time); try again.")
    try:
        return _run(con, sql, max_rows, timeout_s)
    finally:
        _ONE_QUERY.release()


def _run(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int, timeout_s: float) -> SqlResult:
    # read before the query: a transaction the query aborts answers nothing more
    (limit,) = con.execute("SELECT current_setting('memory_limit')").fetchone()  # type: ignore[misc]
    bound = size_bytes(limit) // QUERY_SHARE
    timer = threading.Timer(timeout_s, con.interrupt)
    watch = _MemoryWatch(con, bound)
    timer.start()
    watch.start()
    try:
        cur = con.execute(sql)
        columns = [d[0] for d in cur.description or []]
        rows = cur.fetchmany(max_rows + 1)
    except duckdb.Error as err:
        if watch.tripped or isinstance(err, duckdb.OutOfMemoryException):
            raise SqlRefused(f"the query needs more memory than one query may take here ({bound / 2**20:.1f} MiB, a "
                             f"{QUERY_SHARE}th of memory_limit {limit}) and was stopped; filter first, aggregate "
                             "less at once, or add a LIMIT.") from None
        if isinstance(err, duckdb.InterruptException) or "interrupt" in str(err).lower():
            raise SqlTimeout(
                f"the query ran longer than {timeout_s:g}s and was stopped; add filters or a LIMIT."
            ) from None
        raise SqlRefused(_reason(err)) from None
    finally:
        timer.cancel()
        watch.done.set()
        watch.join()
    truncated = len(rows) > max_rows
    return SqlResult(columns=columns, rows=[list(r) for r in rows[:max_rows]], truncated=truncated)


def _reason(err: duckdb.Error, prefix: str = "") -> str:
    """DuckDB's message, saying plainly when it is the hardening that refused (files, URLs, extensions)."""
    text = " ".join(str(err).split())
    if isinstance(err, duckdb.PermissionException) or "Permission Error" in text:
        return f"reading files or URLs is not allowed in read-only SQL; query the store's tables. ({text})"
    return prefix + text
