"""Ids handed out by the writer: one counter per table in ``id_counters``, never max + 1.

A counter only goes up, inside the writer's transaction: ids of deleted rows (a checkpoint replaced with
``--replace`` or forgotten) are never handed out again, so a trace neuron, an alias or a cached catalog that names
an old id can never come to name another row. A transaction that rolls back rolls its counters back too; nothing
committed ever held those ids.

Which column of which table takes its ids here is declared in ``schema.tables`` (``info={"counter": True}``).
"""

import duckdb

from schema.tables import metadata

COUNTERS: dict[str, str] = {t.name: c.name for t in metadata.sorted_tables for c in t.columns if c.info.get("counter")}


def _column(table: str) -> str:
    if table not in COUNTERS:
        raise ValueError(f"{table} takes no ids from id_counters (no column declared with info counter)")
    return COUNTERS[table]


def start_counters(con: duckdb.DuckDBPyConnection) -> None:
    """Give every counted table a counter at the highest id it holds (0 when empty); existing counters stay."""
    for table, column in COUNTERS.items():
        con.execute(f"INSERT INTO id_counters (table_name, column_name, last_id) SELECT * FROM (SELECT ?, ?, "
                    f"coalesce(max({column}), 0) FROM {table}) "
                    "WHERE NOT EXISTS (SELECT 1 FROM id_counters WHERE table_name = ?)", [table, column, table])


def next_id(con: duckdb.DuckDBPyConnection, table: str, n: int = 1) -> int:
    """The first of ``n`` fresh ids of ``table``, now taken (inside the caller's transaction)."""
    _column(table)
    row = con.execute("UPDATE id_counters SET last_id = last_id + ? WHERE table_name = ? RETURNING last_id",
                      [n, table]).fetchone()
    if row is None:
        raise AssertionError(f"no id counter for {table}: the store was not created or upgraded by the writer")
    return int(row[0]) - n + 1


def peek_id(con: duckdb.DuckDBPyConnection, table: str) -> int:
    """The next id of ``table`` without taking it (a run that hands out ids as it goes; see ``taken_through``)."""
    _column(table)
    row = con.execute("SELECT last_id FROM id_counters WHERE table_name = ?", [table]).fetchone()
    if row is None:
        raise AssertionError(f"no id counter for {table}: the store was not created or upgraded by the writer")
    return int(row[0]) + 1


def taken_through(con: duckdb.DuckDBPyConnection, table: str, last: int) -> None:
    """Record that every id of ``table`` up to ``last`` is taken (the counter never goes down)."""
    _column(table)
    con.execute("UPDATE id_counters SET last_id = greatest(last_id, ?) WHERE table_name = ?", [last, table])
