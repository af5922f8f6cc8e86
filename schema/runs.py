"""The sorted runs of the token tables, and how the writer keeps them few.

Every index or dictionary run appends its token rows as runs sorted by token id (``indexer.index.unit_writer``:
one run per ``run_rows`` rows), so a token's rows lie in one or two row groups of each run, and a lookup reads
about one row group per run: its cost grows with the number of runs (100 M rows: a token's rows read cold in
50–57 ms from 27 runs, 15–22 ms from 4; bench/query_scale.py builds that store). After each run commits,
the writer merges the newest runs (``compact``) until every run holds more vectors than all later runs together:
a store then has at most log2(vectors / smallest run) + 1 runs, and a row is rewritten at most that often, as
each rewrite at least doubles the run that holds it (Bentley and Saxe's logarithmic method; an LSM tree's
compaction). ``lensdb optimize`` still rewrites the whole store into one run.

Runs are intervals of vector ids: ids only grow, so every run's rows hold larger vector ids than any earlier
run's, and the rows of the newest runs are those with ``vector_id >= start``. The starts live in ``lensdb_meta``
(``token_runs``, a JSON list); a store written before lensdb kept them has one run per checkpoint or dictionary.
A run's size is counted in vectors (its vector-id blocks in ``vector_units``): a deleted checkpoint's rows
leave its run, and a run left empty is forgotten.
"""

import bisect
import contextlib
import json
from typing import NamedTuple

import duckdb

from schema.errors import StoreError
from schema.layout import SORTED_BY_TOKEN
from schema.writer import Store

KEY = "token_runs"


class Merged(NamedTuple):
    """What one ``compact`` merged: the runs it found and left, the first vector id of the merged run, and the
    token rows it rewrote."""

    runs_before: int
    runs_after: int
    first_vector_id: int
    rows: int

    def said(self) -> str:
        return (f"merged the newest {self.runs_before - self.runs_after + 1} sorted runs of token rows into one "
                f"({self.rows} rows)")


def run_starts(con: duckdb.DuckDBPyConnection) -> list[int]:
    """The first vector id of each sorted run, ascending (see the module docstring). The starts steer only which
    runs merge: any merge of the newest rows is correct, so a record that is missing or unreadable is replaced by
    one run per checkpoint or dictionary."""
    row = con.execute("SELECT value FROM lensdb_meta WHERE key = ?", [KEY]).fetchone()
    if row is not None:
        with contextlib.suppress(ValueError, TypeError):  # garbled by hand: read as if never recorded
            return sorted(int(s) for s in json.loads(row[0]))
    found = con.execute("SELECT min(first_vector_id) FROM vector_units GROUP BY checkpoint_id, dictionary_id "
                        "ORDER BY 1").fetchall()
    return [int(r[0]) for r in found]


def record_runs(con: duckdb.DuckDBPyConnection, starts: list[int]) -> None:
    """Replace the recorded starts of the sorted runs."""
    con.execute("INSERT OR REPLACE INTO lensdb_meta VALUES (?, ?)", [KEY, json.dumps(sorted(starts))])


def note_runs(con: duckdb.DuckDBPyConnection, starts: list[int]) -> None:
    """Record the runs a writer appended (their first vector ids), inside its transaction."""
    if starts:
        record_runs(con, [s for s in run_starts(con) if s < min(starts)] + sorted(starts))


def run_sizes(starts: list[int], blocks: list[tuple[int, int]]) -> list[int]:
    """Vectors in each run: run i covers ids from ``starts[i]`` up to the next start; ``blocks`` are inclusive
    (first, last) vector-id blocks that do not overlap."""
    sizes = [0] * len(starts)
    for first, last in blocks:
        i = max(0, bisect.bisect_right(starts, first) - 1)
        while first <= last and i < len(starts):
            end = starts[i + 1] - 1 if i + 1 < len(starts) else last
            upto = min(last, end)
            if upto >= first:
                sizes[i] += upto - first + 1
                first = upto + 1
            i += 1
    return sizes


def merge_from(sizes: list[int]) -> int | None:
    """The first run of the newest runs to merge into one, or None: the oldest run no larger than all the runs
    after it together. Merged, every run is larger than all later ones together, so there are at most
    log2(total / smallest) + 1 of them."""
    tail = 0
    first = None
    for i in range(len(sizes) - 1, -1, -1):
        if i < len(sizes) - 1 and sizes[i] <= tail:
            first = i
        tail += sizes[i]
    return first


def compact(con: duckdb.DuckDBPyConnection) -> Merged | None:
    """Merge the newest runs of every token table into one sorted run (``merge_from``), inside the caller's
    transaction; None when the runs already shrink fast enough. The merged rows are appended in (token_id,
    vector_id) order and the old ones deleted: the next checkpoint drops their row groups."""
    starts = run_starts(con)
    blocks = con.execute("SELECT first_vector_id, last_vector_id FROM vector_units ORDER BY 1").fetchall()
    sized = [(s, n) for s, n in zip(starts, run_sizes(starts, blocks), strict=True) if n]
    first = merge_from([n for _, n in sized])
    if first is None:
        if len(sized) != len(starts):
            record_runs(con, [s for s, _ in sized])  # empty runs (deleted checkpoints) forgotten
        return None
    start = sized[first][0]
    rows = 0
    for table in SORTED_BY_TOKEN:
        rows += _merge(con, table, start)
    record_runs(con, [s for s, _ in sized[:first]] + [start])
    return Merged(len(sized), first + 1, start, rows)


def _merge(con: duckdb.DuckDBPyConnection, table: str, start: int) -> int:
    """Rewrite ``table``'s rows from vector id ``start`` on as one run sorted by (token_id, vector_id).

    The sorted copy goes in first, read from the committed rows; then the committed rows are deleted by rowid:
    rows this transaction appended have rowids past every committed one. The count is checked before the
    transaction may commit."""
    (end, before) = con.execute(f"SELECT coalesce(max(rowid) + 1, 0), count(*) FILTER (WHERE vector_id >= ?) "
                                f"FROM {table}", [start]).fetchone()  # type: ignore[misc]
    if not before:
        return 0
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {table} WHERE vector_id >= ? "
                "ORDER BY token_id, vector_id", [start])
    con.execute(f"DELETE FROM {table} WHERE vector_id >= ? AND rowid < ?", [start, end])
    (after,) = con.execute(f"SELECT count(*) FROM {table} WHERE vector_id >= ?", [start]).fetchone()  # type: ignore[misc]
    if after != before:
        raise StoreError(f"merging the sorted runs of {table} would change its rows ({before} → {after}); nothing "
                         "was changed.")
    return int(before)


def compact_store(store: Store) -> Merged | None:
    """``compact`` in a transaction of its own, after a run committed (a run's rows never wait for the merge,
    and a merge that fails or is interrupted leaves the runs as they were); None, merging nothing, where other
    cursors read while the store writes (``Store.readers``: the service).

    DuckDB 1.5.6 can show a reader beside a large append on several threads rows its snapshot should not hold
    (two identical counts in one READ ONLY transaction differed in 1 of 826 transactions beside ten 1.5 M-row
    appends, 2 threads; none in the same test with ``threads = 1``; the service's reliability test saw its
    consistency query fail while a merge ran). A new checkpoint's rows reach a lookup only through its catalog
    rows, but a merge rewrites rows every lookup reads: a request could see a token's hits twice. So the service
    merges only when it starts, before its first request (``service.owner``); otherwise the next run from the
    command line or Python, which holds the file alone, or ``lensdb optimize`` does."""
    if store.readers:
        return None
    with store.transaction(into_file=True) as con:
        return compact(con)


def merge_said(store: Store) -> tuple[Merged | None, str | None]:
    """``compact_store``, and what to tell the user about it: what it merged, or why it could not (the merge is
    then rolled back and the runs stay as they were), or None when nothing needed merging."""
    try:
        merged = compact_store(store)
    except (duckdb.Error, StoreError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        return None, (f"merging the sorted runs of token rows failed ({why}): lookups read one more run until a "
                      "later run merges it or `lensdb optimize` rewrites the store")
    return merged, merged.said() if merged is not None else None

