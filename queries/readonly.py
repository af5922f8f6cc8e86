"""Read-only SQL for users: one SELECT at a time, on a connection that cannot write or reach files,
cut off after a time limit and capped at a row count (datasette's model)."""

import threading
from pathlib import Path

import duckdb

from queries.rows import SqlResult
from schema.connect import open_reader
from schema.errors import LensdbError, StoreError

# Settings that stay locked for the life of the connection: no files, no network, no extensions.
HARDENED = {
    "enable_external_access": "false",
    "autoinstall_known_extensions": "false",
    "autoload_known_extensions": "false",
    "lock_configuration": "true",
}


class SqlRefused(LensdbError):
    """The statement is not a single read-only query."""


class SqlTimeout(LensdbError):
    """The query ran past its time limit and was interrupted."""


def harden(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Lock a connection down for user SQL; after this it cannot be unlocked."""
    # one round trip for all of them (settings at connect time would clash with this process's other
    # connections to the same file: DuckDB refuses a second configuration for an open database)
    con.execute("; ".join(f"SET {key} = {value}" for key, value in HARDENED.items()))
    return con


def open_hardened(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only, locked-down connection to an existing store."""
    con = open_reader(path)
    try:
        return harden(con)
    except duckdb.Error as err:
        con.close()
        raise StoreError(f"cannot lock down the connection to {path}: {err}") from None


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


def run_readonly(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int = 1000, timeout_s: float = 10.0) -> SqlResult:
    """Run one SELECT on a hardened connection; at most ``max_rows`` rows, ``truncated`` says if more."""
    check_statement(con, sql)
    timer = threading.Timer(timeout_s, con.interrupt)
    timer.start()
    try:
        cur = con.execute(sql)
        columns = [d[0] for d in cur.description or []]
        rows = cur.fetchmany(max_rows + 1)
    except duckdb.Error as err:
        if isinstance(err, duckdb.InterruptException) or "interrupt" in str(err).lower():
            raise SqlTimeout(
                f"the query ran longer than {timeout_s:g}s and was stopped; add filters or a LIMIT."
            ) from None
        raise SqlRefused(_reason(err)) from None
    finally:
        timer.cancel()
    truncated = len(rows) > max_rows
    return SqlResult(columns=columns, rows=[list(r) for r in rows[:max_rows]], truncated=truncated)


def _reason(err: duckdb.Error, prefix: str = "") -> str:
    """DuckDB's message, saying plainly when it is the hardening that refused (files, URLs, extensions)."""
    text = " ".join(str(err).split())
    if isinstance(err, duckdb.PermissionException) or "Permission Error" in text:
        return f"reading files or URLs is not allowed in read-only SQL; query the store's tables. ({text})"
    return prefix + text
