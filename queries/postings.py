"""Token postings held in memory: what a warm token lookup reads instead of a statement.

In DuckDB a lookup of one token's rows walks the zone maps of every row group of the token-sorted tables (~1 µs
each: 810 of them at 100 M rows) and decodes the token's vectors of each sorted run: 2.3–2.9 ms of a ~4 ms warm
lookup there, against a 2 ms target. ``Lens.warm`` (what ``lensdb serve`` runs) therefore reads both tables once
into numpy columns (15 B a row: vector id, side, rank, score, z-score; 19 B with a head pair's source token) and
keeps them in their sorted runs, the stretches whose token ids do not descend (whatever runs the writer and its
merges left, ``schema.runs``), each with the offset of every token id. A lookup slices each run at its token,
keeps the rows of its side and vector-id ranges and ranks them: ~0.1 ms. The vectors' certificate bounds
(``vectors.top_zk``, ``bottom_zk``) are held beside them, so a certificate over vectors without stored values
needs no statement either (``queries.exact``).

They are held in the value cache (``exact.CACHE``, within its budget: ``value_cache_mb``) under the store's file
and catalog generation, like stored values: a run that adds or forgets a checkpoint changes the generation and
the lookup goes back to SQL until the next ``warm``. A merge of sorted runs changes no row, only their order.
That next ``warm`` (a service's, after each index job) reads only the rows of the new vectors where nothing was
forgotten meanwhile: vector ids only grow, so they are the ids past those already held.
numpy and pyarrow are imported inside the functions, as in ``queries.exact``.
"""

import itertools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from queries import exact
from queries import sql as q
from queries.catalog import Catalog, catalog

MAX_RUNS = 32  # more sorted runs than this (head maps unmerged, many service runs) are sorted into one at warm
MAX_PARTS = 16  # parts (one table's rows as one warm read them) before a warm reads all again: each costs every lookup
BATCH = 1 << 20  # rows per Arrow batch read
ROW_BYTES = {"vector_tokens": 15, "head_pairs": 19}  # held bytes per row (see the module's docstring)


@dataclass
class Table:
    """Rows of one token-sorted table (all, or those of the vectors one warm found new): column arrays, split into
    sorted runs, each run with the row offset of every token id (``offsets[r][t]`` … ``offsets[r][t + 1]``)."""

    offsets: list[Any]
    vector_id: Any
    top: Any  # bool: side = 'top'
    rank: Any
    score: Any
    zscore: Any
    source: Any  # int32 source token id (head_pairs), or None (vector_tokens)

    @property
    def nbytes(self) -> int:
        arrays = (*self.offsets, self.vector_id, self.top, self.rank, self.score, self.zscore)
        return int(sum(a.nbytes for a in arrays) + (self.source.nbytes if self.source is not None else 0))

    def rows_of(self, token_id: int) -> Any:
        """Row offsets of ``token_id``'s rows, run after run."""
        import numpy as np

        spans = [(int(o[token_id]), int(o[token_id + 1])) for o in self.offsets if 0 <= token_id < len(o) - 1]
        return np.concatenate([np.arange(a, z) for a, z in spans if z > a] or [np.empty(0, np.int64)])


class Bounds:
    """Per vector id, whether its k-th stored z-score could let it beat a bound (``sql.unvalued_beyond`` as arrays).
    ``beats[side][v]``: the z-score that must beat the bound (bottom negated; unknown, and a NaN top, which DuckDB
    orders above every number: +inf; a NaN bottom and no vector: −inf); ``order[side]`` the vector ids from the
    strongest down (``keys``: their negated values, ascending), so the few that beat a high bound are a prefix;
    ``always[side]`` the ids that beat any bound, +inf included; ``ids`` every vector id, ascending."""

    def __init__(self, vector_id: Any, top_zk: Any, bottom_zk: Any, top_null: Any, bottom_null: Any) -> None:
        import numpy as np

        size = int(vector_id.max()) + 1 if vector_id.size else 0
        self.ids = np.sort(vector_id)
        self.beats: dict[str, Any] = {}
        self.order: dict[str, Any] = {}
        self.keys: dict[str, Any] = {}
        self.always: dict[str, Any] = {}
        top_always = top_null | np.isnan(top_zk)
        top = np.where(top_always, np.inf, top_zk)
        bottom = np.where(bottom_null, np.inf, np.where(np.isnan(bottom_zk), -np.inf, -bottom_zk))
        for side, value, always in (("top", top, top_always), ("bottom", bottom, bottom_null)):
            beats = np.full(size, -np.inf)
            beats[vector_id] = value
            order = np.argsort(-value, kind="stable")
            self.beats[side], self.order[side], self.keys[side] = beats, vector_id[order], -value[order]
            self.always[side] = np.sort(vector_id[always])
        self.nbytes = int(self.ids.nbytes + sum(a.nbytes for d in (self.beats, self.order, self.keys, self.always)
                                                for a in d.values()))

    def any_beyond(self, ranges: Sequence[tuple[int, int]], side: str, bound: float | None) -> bool:
        """Whether a vector of ``ranges`` has a k-th z-score on ``side`` beating ``bound`` (None: whether the ranges
        hold any vector; not a NaN bound); costs the fewer of the vectors that beat it and the vectors in the
        ranges."""
        import numpy as np

        if bound is None:
            return _any_in(self.ids, ranges)
        b = float(bound) if side == "top" else -float(bound)
        if b == np.inf:  # nothing known beats +inf: only the unknown
            return _any_in(self.always[side], ranges)
        beats = self.beats[side]
        spans = [(max(0, a), min(z, beats.size - 1)) for a, z in ranges]
        spans = [(a, z) for a, z in spans if a <= z]
        k = int(np.searchsorted(self.keys[side], -b, side="left"))  # how many vectors' values are above b
        if k <= sum(z - a + 1 for a, z in spans):
            return _any_in(np.sort(self.order[side][:k]), spans)
        return any(bool(beats[a:z + 1].max() > b) for a, z in spans)


def _any_in(ids: Any, ranges: Sequence[tuple[int, int]]) -> bool:
    """Whether any of the ascending ``ids`` lies in one of the inclusive ``ranges``."""
    import numpy as np

    if not ids.size or not ranges:
        return False
    at = np.searchsorted(ids, np.array([a for a, _ in ranges]))
    ends = np.array([z for _, z in ranges])
    return bool(np.any((at < ids.size) & (ids[np.minimum(at, ids.size - 1)] <= ends)))


@dataclass(eq=False)
class Postings:
    """Both token-sorted tables and the vectors' bounds, as one store generation held them. ``tables``: each
    table's rows as read by a full warm, then the rows of the vectors each later warm found new (vector ids only
    grow, so a warm after an index run reads only the ids past ``covered``); ``counts``: rows held per table."""

    tables: list[Table]
    bounds: Bounds
    origin: tuple = ()  # the file they were read from: its path and inode
    covered: int = -1  # the largest vector id of the catalog they were read under
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tables) + self.bounds.nbytes

    def hits(self, groups: list[tuple[list[tuple[int, int]], list[int]]], side: str, n: int) -> list[tuple]:
        """What ``sql.hits_in_ranges(groups, side, n, 0)`` returns, from memory: the ``n`` strongest rows on
        ``side`` of each group's token ids inside its vector-id ranges, (vector_id, side, rank, token_id, score,
        zscore, source_token_id), ordered as DuckDB orders them (z-score, NaN above every number, then vector id;
        then rank, token and source, which SQL leaves open)."""
        import numpy as np

        top = side == "top"
        found: list[tuple[Any, ...]] = []
        for ranges, token_ids in groups:
            spans = sorted(ranges)
            lo = np.array([a for a, _ in spans], dtype=np.int64)
            hi = np.array([z for _, z in spans], dtype=np.int64)
            for t in token_ids:
                for table in self.tables:
                    at = table.rows_of(t)
                    if not at.size:
                        continue
                    at = at[table.top[at] == top]
                    vid = table.vector_id[at].astype(np.int64)
                    k = np.searchsorted(lo, vid, side="right") - 1
                    keep = (k >= 0) & (vid <= hi[np.maximum(k, 0)])
                    at = at[keep]
                    if at.size:
                        source = table.source[at] if table.source is not None else np.full(at.size, -1, np.int32)
                        found.append((vid[keep], table.rank[at], np.full(at.size, t, np.int64), table.score[at],
                                      table.zscore[at], source))
        if not found:
            return []
        vid, rank, token, score, z, source = (np.concatenate(c) for c in zip(*found, strict=True))
        key = np.where(np.isnan(z), -np.inf, -z.astype(np.float64)) if top else \
            np.where(np.isnan(z), np.inf, z.astype(np.float64))
        if key.size > n:  # only rows as strong as the n-th can be among the n
            keep = np.flatnonzero(key <= np.partition(key, n - 1)[n - 1])
            vid, rank, token, score, z, source, key = (a[keep] for a in (vid, rank, token, score, z, source, key))
        order = np.lexsort((source, token, rank, vid, key))[:n]
        return [(v, side, r, t, s, zz, None if src < 0 else src) for v, r, t, s, zz, src in zip(
            vid[order].tolist(), rank[order].tolist(), token[order].tolist(), score[order].tolist(),
            z[order].tolist(), source[order].tolist(), strict=True)]


def _key(cat: Catalog, path: Path) -> tuple:
    return (*exact.store_of(path, cat), "postings")


def held(cat: Catalog, path: Path) -> Postings | None:
    """The postings of the store's current generation, if ``warm`` holds them."""
    found = exact.CACHE.get(_key(cat, path))
    return found if isinstance(found, Postings) else None


_LATEST: "weakref.WeakValueDictionary[tuple, Postings]" = weakref.WeakValueDictionary()  # by origin


def warm(con: duckdb.DuckDBPyConnection, cat: Catalog, path: Path) -> Postings | None:
    """Read and hold the postings of the store as ``cat`` describes it, if they fit what is left of the value
    cache's budget; None when they do not, or when the store changed while they were read (the catalog's
    generation moved: a lookup then keeps using SQL). Where this process held the postings of the same file
    before its last runs, and those runs only added vectors, only the new vectors' rows are read."""
    key = _key(cat, path)
    found = exact.CACHE.get(key)
    if isinstance(found, Postings):
        return found
    origin = key[0][:2]
    latest = _LATEST.get(origin)  # before the cache lets go of it: the cache holds the only strong reference
    exact.CACHE.drop_stale(key)  # the postings of the store before its last run must not count against these
    covered = max((u.last_id for u in cat.units), default=-1)
    base = _unchanged(con, latest, origin, covered)
    del latest
    after = base.covered if base is not None else None
    counts = {t: int(con.execute(*q.table_rows(t, after)).fetchone()[0]) for t in q.SORTED_BY_TOKEN}  # type: ignore[index]
    kept = base.nbytes if base is not None else 0
    if kept + sum(ROW_BYTES[t] * c for t, c in counts.items()) > exact.CACHE.budget - exact.CACHE.used:
        return None
    read = [_read(con, t, counts[t], covered >= 2 ** 31, after) for t in q.SORTED_BY_TOKEN]
    bounds = _bounds(con)
    if any(t is None for t in read) or catalog(con, path, cat.snapshot).generation != cat.generation:
        return None
    tables = (base.tables if base is not None else []) + [t for t in read if t is not None and t.offsets]
    total = {t: c + (base.counts[t] if base is not None else 0) for t, c in counts.items()}
    made = Postings(tables, bounds, origin, covered, total)
    if not exact.CACHE.put(key, made):
        return None
    _LATEST[origin] = made
    return made


def _unchanged(con: duckdb.DuckDBPyConnection, base: Postings | None, origin: tuple, covered: int) -> Postings | None:
    """``base`` if the store still holds exactly the rows it holds (nothing forgotten or replaced since: the
    rows of its vector ids are as many as it read) and new rows can only be new vectors'; else None."""
    if base is None or base.origin != origin or base.covered > covered or len(base.tables) >= MAX_PARTS:
        return None
    for table, held in base.counts.items():
        (now,) = con.execute(*q.table_rows(table, None, base.covered)).fetchone()  # type: ignore[misc]
        if now != held:
            return None
    return base


def _read(con: duckdb.DuckDBPyConnection, table: str, count: int, wide: bool, after: int | None) -> Table | None:
    """One table's rows (of the vector ids past ``after``, if given) in its scan order (each sorted run as
    written), its runs found where token ids descend; None when they are no longer ``count`` rows (a run
    committed meanwhile)."""
    import numpy as np

    pairs = table == "head_pairs"
    sql, params = q.postings_scan(table, after)
    types = [np.int32, np.bool_, np.int64 if wide else np.int32, np.int16, np.float32, np.float32] + \
        ([np.int32] if pairs else [])
    columns: list[Any] = [np.empty(count, t) for t in types]
    for column in columns:  # touch every page first: faulting them in while DuckDB's threads map and unmap its
        column.fill(0)      # batches' memory stalled on the kernel's memory-map lock (14 s against 7 s, 100 M rows)
    token, top, vector_id, rank, score, zscore = columns[:6]
    source = columns[6] if pairs else None
    at = 0
    for batch in con.execute(sql, params).to_arrow_reader(BATCH):
        m = batch.num_rows
        if at + m > count:
            return None
        for column, arr in zip(columns, batch.columns, strict=True):
            column[at:at + m] = arr.to_numpy(zero_copy_only=False)
        at += m
    if at != count:
        return None
    starts = [0, *(np.flatnonzero(token[1:] < token[:-1]) + 1).tolist(), count]
    if len(starts) - 2 > MAX_RUNS:  # too many runs to slice each per lookup: one run, sorted by token
        order = np.argsort(token, kind="stable")
        token, top, vector_id, rank, score, zscore = (a[order] for a in (token, top, vector_id, rank, score, zscore))
        source = source[order] if source is not None else None
        starts = [0, count]
    vocab = int(token.max()) + 2 if count else 1
    offsets = [np.searchsorted(token[a:z], np.arange(vocab, dtype=token.dtype)).astype(np.int64) + a
               for a, z in itertools.pairwise(starts) if z > a]
    return Table(offsets, vector_id, top, rank, score, zscore, source)


def _bounds(con: duckdb.DuckDBPyConnection) -> Bounds:
    import numpy as np

    got = con.execute(*q.vector_bounds()).to_arrow_table()
    vector_id = got.column(0).to_numpy()

    def column(i: int) -> tuple[Any, Any]:
        arr = got.column(i)
        null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        return np.asarray(arr.fill_null(0.0).to_numpy(zero_copy_only=False), dtype=np.float64), null

    (top, top_null), (bottom, bottom_null) = column(1), column(2)
    return Bounds(vector_id, top, bottom, top_null, bottom_null)
