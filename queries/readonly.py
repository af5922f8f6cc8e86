"""Read-only SQL for users: one SELECT over the store's own tables and views, calling only allow-listed
functions (``queries.allowlist``), on a connection that cannot write or reach files, bounded in memory, threads
and spill space; cut off after a time limit or a growth of memory, and capped at a row count and a response size
in bytes (datasette's model, with DuckDB's own parse as the checker).

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

import itertools
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as clock
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import duckdb

from queries.allowlist import FUNCTIONS, TABLE_FUNCTIONS, VALUE_FUNCTIONS
from queries.rows import SqlResult
from queries.sql import inline
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


class SqlTooLarge(LensdbError):
    """The query's answer (or what it built on the way) was larger than its limits allow."""


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
        self.serial = next(_SERIALS)  # which opening of the file this is: a new instance may see a changed file
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


_SERIALS = itertools.count(1)
_OPEN: dict[tuple[str, Limits], _Instance] = {}
_OPEN_LOCK = threading.RLock()  # re-entrant: a Lens collected mid-call gives its cursor back from here


def open_hardened(path: str | Path, limits: Limits | None = None
                  ) -> tuple[duckdb.DuckDBPyConnection, Callable[[], None], tuple]:
    """A read-only, locked-down, bounded connection to an existing store, the function that gives it back, and
    the snapshot it reads (``queries.catalog``): a store attached read-only cannot change while it is attached
    (no other process may write it), so every cursor of one instance reads the same store.

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

    return cur, release, ("read-only instance", inst.serial)


def _give_back(key: tuple[str, Limits], inst: _Instance) -> None:
    inst.refs -= 1
    if inst.refs == 0:
        _OPEN.pop(key, None)
        inst.close()


# Bounds on what one call may ask for, whoever asks (CLI, Python, HTTP).
MAX_SQL_CHARS = 32_768  # one statement's text: literals in it are the only input besides the store, and DuckDB
# plans (uninterruptibly) in time that grows with it
MAX_ROWS = 1_000_000
MAX_TIMEOUT_S = 3600.0
MAX_BYTES = 1 << 30
DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_RSS_BUDGET_MB = 1024

# What may appear in FROM, and which query nodes: anything else in DuckDB's parse is refused by name.
_TABLE_REFS = {"BASE_TABLE", "JOIN", "SUBQUERY", "TABLE_FUNCTION", "EXPRESSION_LIST", "EMPTY", "EMPTY_FROM",
               "SHOW_REF", "PIVOT"}
_QUERY_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "CTE_NODE"}
# (A LAMBDA node is not refused itself: outside a function that takes a lambda, none of which is allowed, DuckDB
# binds `a -> b` as the JSON operator; the functions in a lambda's body are checked like any other.)
_REFUSED_EXPRESSIONS = {
    "PARAMETER": "parameters ($1, ?) are not supported here; write the values into the query",
}


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Accept exactly one SELECT that reads only the store's own tables and views and calls only allow-listed
    functions (``queries.allowlist``); refuse anything else with a reason, without running it.

    DuckDB parses the statement (``extract_statements`` for its type, ``json_serialize_sql`` for its tree), so
    what is checked is what DuckDB would run: every table it names, every function and table function it calls,
    in every subquery and CTE, with CTE names visible only where DuckDB would see them."""
    if not isinstance(sql, str):
        raise SqlRefused("send the SQL as text.")
    if len(sql) > MAX_SQL_CHARS:
        raise SqlRefused(f"the statement is {len(sql)} characters long; the limit is {MAX_SQL_CHARS}.")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:
        raise SqlRefused("the SQL is not valid Unicode text (it holds a lone surrogate); send UTF-8 text.") from None
    if "\x00" in sql:
        raise SqlRefused("the SQL holds a NUL character.")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as err:
        raise SqlRefused(_reason(err, "cannot parse the SQL: ")) from None
    if len(statements) != 1:
        raise SqlRefused(f"send exactly one statement (got {len(statements)}).")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise SqlRefused(f"only SELECT queries are allowed here, not {kind.name}. The store is read-only.")
    try:
        # inlined: a bound parameter makes DuckDB import pandas where it is installed (lensdb[frames])
        row = con.execute(*inline(("SELECT json_serialize_sql(?)", [sql]))).fetchone()
        tree = json.loads(row[0]) if row else None
    except RecursionError:
        raise SqlRefused("the statement is nested too deeply to check; simplify it.") from None
    except duckdb.Error as err:
        raise SqlRefused(_reason(err, "cannot parse the SQL: ")) from None
    if not isinstance(tree, dict) or tree.get("error") or len(tree.get("statements") or []) != 1:
        detail = tree.get("error_message", "") if isinstance(tree, dict) else ""
        raise SqlRefused(f"only plain SELECT queries are allowed here ({detail or 'not a single SELECT'}).")
    _check_tree(tree["statements"][0]["node"], _relations(con))


def _relations(con: duckdb.DuckDBPyConnection) -> tuple[str, set[str]]:
    """The current database's name and the names (lower case) of its tables and views in schema main."""
    rows = con.execute(
        "SELECT current_database(), table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' UNION ALL SELECT current_database(), view_name FROM duckdb_views() "
        "WHERE database_name = current_database() AND schema_name = 'main' AND NOT internal").fetchall()
    database = rows[0][0] if rows else con.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    return str(database).lower(), {str(r[1]).lower() for r in rows}


def _check_tree(root: dict, relations: tuple[str, set[str]]) -> None:
    """Walk DuckDB's parse tree (iteratively: a hostile statement may nest deeply) carrying the CTE names
    visible at each point; refuse the first thing not on the allow-lists."""
    database, tables = relations
    stack: list[tuple[object, frozenset[str]]] = [(root, frozenset())]
    while stack:
        node, ctes = stack.pop()
        if isinstance(node, list):
            stack.extend((item, ctes) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        kind, cls = node.get("type"), node.get("class")
        if cls in _REFUSED_EXPRESSIONS:
            raise SqlRefused(_REFUSED_EXPRESSIONS[cls] + ".")
        if isinstance(kind, str) and kind.endswith("_NODE") and kind not in _QUERY_NODES:
            what = "recursive CTEs" if "RECURSIVE" in kind else kind.lower().replace("_", " ")
            raise SqlRefused(f"{what} are not allowed here; write a plain SELECT.")
        if "cte_map" in node:  # a query node: its CTEs are visible in it, each also to the CTEs after it
            seen = set(ctes)
            for entry in (node.get("cte_map") or {}).get("map") or []:
                stack.append((entry.get("value"), frozenset(seen)))
                seen.add(str(entry.get("key", "")).lower())
            ctes = frozenset(seen)
            stack.extend((v, ctes) for k, v in node.items() if k != "cte_map")
            continue
        if cls is None and "alias" in node and "sample" in node:  # a table reference: what stands in FROM
            _check_table_ref(node, ctes, database, tables, stack)
            continue
        if "function_name" in node:
            _check_function(node, FUNCTIONS, "function")
        elif cls == "COLUMN_REF" and len(node.get("column_names") or []) == 1:
            # DuckDB binds a bare name it finds no column for as a call: `SELECT current_user`
            name = str(node["column_names"][0]).lower()
            if name in VALUE_FUNCTIONS and name not in FUNCTIONS:
                raise SqlRefused(f"{name} is not allowed in read-only SQL (it reads the session, not the store).")
        stack.extend((v, ctes) for v in node.values() if isinstance(v, dict | list))


def _check_table_ref(node: dict, ctes: frozenset[str], database: str, tables: set[str],
                     stack: list[tuple[object, frozenset[str]]]) -> None:
    kind = node.get("type")
    if kind == "BASE_TABLE":
        name = str(node.get("table_name", ""))
        catalog, schema = str(node.get("catalog_name") or "").lower(), str(node.get("schema_name") or "").lower()
        if node.get("at_clause"):
            raise SqlRefused("time travel (AT …) is not available here.")
        if catalog not in ("", database) or schema not in ("", "main"):
            raise SqlRefused(f"only the store's own tables and views can be read here, not "
                             f"{'.'.join(p for p in (catalog, schema, name) if p)!r}.")
        if not (name.lower() in tables or (not catalog and not schema and name.lower() in ctes)):
            raise SqlRefused(f"{name!r} is not a table or view of this store (reading files or URLs is not allowed "
                             "in read-only SQL); the tables and views are listed in the README, 'SQL'.")
    elif kind == "TABLE_FUNCTION":
        function = node.get("function") or {}
        _check_function(function, TABLE_FUNCTIONS, "table function")
        stack.extend((v, ctes) for k, v in function.items() if isinstance(v, dict | list))
        stack.extend((v, ctes) for k, v in node.items() if k != "function" and isinstance(v, dict | list))
        return
    elif kind == "SHOW_REF" and node.get("table_name"):
        raise SqlRefused("SHOW of DuckDB's own catalog is not allowed here; query the store's tables.")
    elif kind not in _TABLE_REFS:
        raise SqlRefused(f"{str(kind).lower().replace('_', ' ')} in FROM is not allowed here.")
    stack.extend((v, ctes) for v in node.values() if isinstance(v, dict | list))


def _check_function(node: dict, allowed: frozenset[str], what: str) -> None:
    name = str(node.get("function_name", ""))
    schema, catalog = str(node.get("schema") or "").lower(), str(node.get("catalog") or "").lower()
    if catalog or schema not in ("", "main"):
        raise SqlRefused(f"{what} {'.'.join(p for p in (catalog, schema, name) if p)!r} is not allowed here; "
                         "call functions without a schema.")
    if name.lower() not in allowed:
        raise SqlRefused(f"{what} {name!r} is not allowed in read-only SQL (settings, logging, files, system "
                         "tables and functions whose output size an argument sets are not on the allow-list; "
                         "see queries/allowlist.py).")


# DuckDB's memory_limit holds for its whole instance, and DuckDB says how much memory the instance uses, not which
# query uses it. So user SQL runs one query at a time in this process (lookups and the other questions never wait
# for it), and that query is stopped once DuckDB's working memory (everything but cached table blocks, which it
# can evict) has grown by more than this share of memory_limit since it started: a single allocation can at
# most double that, which still leaves half for everyone else. What DuckDB does not count (the strings and lists
# a query builds, the rows encoded for the answer) is bounded by the growth of the process (``rss_budget_mb``).
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


class _Watchdog:
    """Stops the query on ``con`` when its time is up, when DuckDB's working memory has grown by more than
    ``duck_bound`` bytes, or when the process has grown by more than ``budget`` bytes since it started (DuckDB's
    memory limit does not cover the strings and lists a query builds)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, timeout_s: float, budget: int | None,
                 duck_bound: int | None = None) -> None:
        self.con, self.deadline = con, time.monotonic() + timeout_s
        self.start_rss = _rss()
        self.limit = None if budget is None or self.start_rss is None else self.start_rss + budget
        self.duck_bound = duck_bound
        self.probe = con.cursor() if duck_bound is not None else None
        self.duck_base = _working_memory(self.probe) if self.probe is not None else 0
        self.tripped: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="lensdb-sql-watchdog", daemon=True)

    def __enter__(self) -> "_Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def _watch(self) -> None:
        try:
            while not self._done.wait(min(0.01, max(0.0, self.deadline - time.monotonic()))):
                if self.expired():
                    self.tripped = "time"
                elif self.limit is not None and (_rss() or 0) > self.limit:
                    self.tripped = "memory"
                elif (self.probe is not None and self.duck_bound is not None
                      and _working_memory(self.probe) - self.duck_base > self.duck_bound):
                    self.tripped = "duckdb"
                else:
                    continue
                self.con.interrupt()
                return
        finally:
            if self.probe is not None:
                self.probe.close()


def _rss() -> int | None:
    """This process's resident memory in bytes (Linux), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def plain(value: object) -> object:
    """A value as JSON can carry it: dates as ISO text, blobs as hex, decimals and non-finite floats handled."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date | clock):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, timedelta | UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return str(value)


def check_limits(max_rows: object, timeout_s: object, max_bytes: object) -> None:
    """Refuse limits that are not numbers in range (negative, zero, infinite, NaN, absurdly large)."""
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or not 1 <= max_rows <= MAX_ROWS:
        raise LensdbError(f"the row limit must be a whole number from 1 to {MAX_ROWS}, not {max_rows!r}.")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not (
            math.isfinite(timeout_s) and 0 < timeout_s <= MAX_TIMEOUT_S):
        raise LensdbError(f"the time limit must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}, "
                          f"not {timeout_s!r}.")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or not 1 <= max_bytes <= MAX_BYTES:
        raise LensdbError(f"the response size limit must be a whole number of bytes from 1 to {MAX_BYTES}, "
                          f"not {max_bytes!r}.")


def run_readonly(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int = 1000, timeout_s: float = 10.0,
                 max_bytes: int = DEFAULT_MAX_BYTES, rss_budget_mb: int | None = DEFAULT_RSS_BUDGET_MB) -> SqlResult:
    """Run one checked SELECT: at most ``max_rows`` rows and ``max_bytes`` bytes of JSON (``truncated`` and
    ``truncated_by`` say which cap cut it), all within ``timeout_s`` seconds including the encoding; stopped if
    it takes more than a ``QUERY_SHARE``-th of ``memory_limit`` or the process grows by more than
    ``rss_budget_mb`` MiB meanwhile. It waits at most ``timeout_s`` for the user query before it (one at a
    time, see ``QUERY_SHARE``). Rows hold JSON-ready values (``plain``)."""
    check_limits(max_rows, timeout_s, max_bytes)
    check_statement(con, sql)
    if not _ONE_QUERY.acquire(timeout=timeout_s):
        raise SqlTimeout(f"other SQL queries held the store for {timeout_s:g}s (they run one at a time); try again.")
    try:
        return _run(con, sql, max_rows, timeout_s, max_bytes, rss_budget_mb)
    finally:
        _ONE_QUERY.release()


def _run(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int, timeout_s: float, max_bytes: int,
         rss_budget_mb: int | None) -> SqlResult:
    # read before the query: a transaction the query aborts answers nothing more
    (limit,) = con.execute("SELECT current_setting('memory_limit')").fetchone()  # type: ignore[misc]
    bound = size_bytes(limit) // QUERY_SHARE
    budget = None if rss_budget_mb is None else int(rss_budget_mb) << 20
    rows: list[list] = []
    size, truncated_by = 0, None
    with _Watchdog(con, timeout_s, budget, bound) as dog:
        try:
            cur = con.execute(sql)
            columns = [d[0] for d in cur.description or []]
            size = len(json.dumps(columns, ensure_ascii=False).encode())
            while truncated_by is None and (batch := cur.fetchmany(min(1024, max_rows + 1 - len(rows)))):
                for raw in batch:
                    if len(rows) == max_rows:
                        truncated_by = "rows"
                        break
                    row = [plain(v) for v in raw]
                    size += len(json.dumps(row, ensure_ascii=False).encode()) + 1
                    if size > max_bytes:
                        truncated_by = "bytes"
                        break
                    rows.append(row)
                    if dog.expired():
                        raise _Stopped
                if dog.tripped:
                    raise _Stopped
        except (duckdb.Error, _Stopped) as err:
            if dog.tripped == "duckdb" or isinstance(err, duckdb.OutOfMemoryException):
                raise SqlRefused(
                    f"the query needs more memory than one query may take here ({bound / 2**20:.1f} MiB, a "
                    f"{QUERY_SHARE}th of memory_limit {limit}) and was stopped; filter first, aggregate less at "
                    "once, or add a LIMIT.") from None
            if dog.tripped == "memory":
                raise SqlTooLarge(
                    f"the query was stopped: it grew this process's memory by more than {rss_budget_mb} MiB. "
                    "Aggregate in SQL, add filters or a LIMIT.") from None
            if dog.tripped == "time" or isinstance(err, _Stopped | duckdb.InterruptException):
                raise SqlTimeout(
                    f"the query ran longer than {timeout_s:g}s and was stopped; add filters or a LIMIT."
                ) from None
            raise SqlRefused(_reason(err)) from None  # type: ignore[arg-type]
        except UnicodeDecodeError:
            raise SqlRefused("the result holds text that is not valid UTF-8.") from None
    if truncated_by == "bytes" and not rows:
        raise SqlTooLarge(f"the first row alone is larger than the response limit of {max_bytes} bytes; select "
                          "fewer or shorter columns.")
    return SqlResult(columns=columns, rows=rows, truncated=truncated_by is not None, truncated_by=truncated_by)


class _Stopped(Exception):
    """The watchdog's deadline passed while rows were being encoded."""


def _reason(err: duckdb.Error, prefix: str = "") -> str:
    """DuckDB's message, saying plainly when it is the hardening that refused (files, URLs, extensions)."""
    text = " ".join(str(err).split())[:1000]
    if isinstance(err, duckdb.PermissionException) or "Permission Error" in text:
        return f"reading files or URLs is not allowed in read-only SQL; query the store's tables. ({text})"
    return prefix + text
