"""Exact search: who promotes (or suppresses) a token or any direction, among *every* indexed vector.

**A token, with a certificate.** Each vector stores the z-score of its k-th token per side (``vectors.top_zk``,
``bottom_zk``): a vector whose top list lacks X has z(X) ≤ its top z_k (bottom: ≥ its bottom z_k). The stored
hits give the n-th best z found, t; only vectors whose bound beats t can change the answer. Those are scored
exactly from their stored values and the basis row of X (``vector_values`` · ``basis_rows``) and merged with the
stored hits: the answer is then the true top n by z-score among all vectors searched. Where a vector that could
enter it has no stored values, the rows say ``exact: false`` and why.

Two ways to score the same candidates, one answer: where the stored values are held in memory (``CACHE``: after
``Lens.warm``, or a direction scan that read them) numpy scores them — each chunk keeps its vectors sorted by
bound, so the candidates are a prefix found by bisection; otherwise one DuckDB statement finds, scores and ranks
them where the values lie (``sql.certificate_scores``), so a fresh process (the command line) neither imports
numpy nor reads more than the candidates.

**A direction.** ``u = Σ w_t · row_t`` over the basis rows of the asked tokens (a set: w = 1/|set|; a contrast
subtracts the other set's mean; a text: the mean over its words). A vector's score is v·u; over tokens drawn
independently and uniformly from the vocabulary its mean is (Σw)·logit_mean and its variance (Σw²)·logit_std²,
so z = (v·u − Σw·mean) / (std·√Σw²): for one token this is the usual z-score, for a contrast of two tokens it is
(z_a − z_b)/√2. Every stored vector in scope is scored: a float32 GEMV per chunk of stored values held in memory
(read once, sequentially, through Arrow), never a V-wide matrix.

numpy and pyarrow are imported inside the functions that compute; the SQL is built in ``queries.sql``.
"""

import functools
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from queries import sql as q
from queries.catalog import Catalog, store_key
from schema.errors import LensdbError

if TYPE_CHECKING:
    from queries.postings import Bounds

CHUNK = 16384  # stored vectors per chunk: the unit read, held in memory and scanned (48 MiB at d = 768)
NO_VALUES = "vectors that could rank here have no stored values (indexed with --no-vectors, before schema " \
            "version 8, or head-map pairs)"


@dataclass(frozen=True)
class Chunk:
    """Consecutive vector ids ``first…last`` of one checkpoint whose values are stored, read by the basis rows of
    ``role``."""

    checkpoint_id: int
    role: str
    first: int
    last: int


@dataclass
class Outcome:
    """How exact an answer is: ``exact`` with the reason when it is not, and what it cost."""

    exact: bool = True
    why: str | None = None
    scored: int = 0  # (vector, token) pairs scored exactly from stored values

    def inexact(self, why: str) -> None:
        self.exact = False
        self.why = self.why or why


class Held:
    """One chunk's stored values in memory ([n, d] float32) with each vector's statistics, and per side the
    vectors ordered by their bound (strongest first; an unknown bound counts as the strongest)."""

    def __init__(self, values: Any, mean: Any, std: Any, top_zk: Any, bottom_zk: Any) -> None:
        import numpy as np

        self.values, self.mean, self.std = values, mean, std
        self.order: dict[str, Any] = {}
        self.keys: dict[str, Any] = {}  # ascending −sign·bound, for bisection
        for side, zk, sign in (("top", top_zk, 1.0), ("bottom", bottom_zk, -1.0)):
            key = np.where(np.isnan(zk), -np.inf, -sign * zk.astype(np.float64))
            order = np.argsort(key, kind="stable")
            self.order[side], self.keys[side] = order, key[order]
        self.nbytes = int(sum(a.nbytes for a in (values, mean, std, *self.order.values(), *self.keys.values())))

    def beyond(self, side: str, bound: float | None) -> Any:
        """Row offsets of the vectors whose bound on ``side`` beats ``bound`` (None: every vector)."""
        import numpy as np

        if bound is None:
            return self.order[side]
        sign = 1.0 if side == "top" else -1.0
        return self.order[side][:int(np.searchsorted(self.keys[side], -sign * bound, side="left"))]


class ValueCache:
    """Chunks of stored values (and the basis rows that read them), and a store's token postings
    (``queries.postings``), held in memory, least recently used out first, within ``budget`` bytes (default a
    quarter of the machine's memory; ``Lens.warm(value_cache_mb=…)`` or ``lensdb serve --value-cache-mb`` set it).
    Keyed by store file, catalog generation and chunk, so an index run or a forget is never answered from old
    values."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._held: OrderedDict[tuple, Any] = OrderedDict()  # Held chunks and HeldBasis matrices
        self._used = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Any:
        with self._lock:
            held = self._held.get(key)
            if held is not None:
                self._held.move_to_end(key)
            return held

    def put(self, key: tuple, held: Any) -> bool:
        """Keep ``held`` if it fits the budget, dropping the least recently used (and whatever an older version
        of the same file held); False when it is larger than the whole budget."""
        with self._lock:
            self._drop_stale(key)
            if held.nbytes > self.budget:
                return False
            if key in self._held:
                return True
            while self._held and self._used + held.nbytes > self.budget:
                self._used -= self._held.popitem(last=False)[1].nbytes
            self._held[key] = held
            self._used += held.nbytes
            return True

    def drop_stale(self, key: tuple) -> None:
        """Drop what an older version of ``key``'s file held (another inode, write or catalog generation): it can
        never be asked for again, and would count against the budget of what replaces it."""
        with self._lock:
            self._drop_stale(key)

    def _drop_stale(self, key: tuple) -> None:
        for old in [k for k in self._held if k[0][0] == key[0][0] and k[:2] != key[:2]]:
            self._used -= self._held.pop(old).nbytes

    @property
    def used(self) -> int:
        return self._used

    def clear(self) -> None:
        with self._lock:
            self._held.clear()
            self._used = 0


def _quarter_of_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 1 << 30


CACHE = ValueCache(_quarter_of_memory())
_CHUNKS: dict[tuple, list[Chunk]] = {}
_ROWS: OrderedDict[tuple, Any] = OrderedDict()  # basis rows by (file, generation, checkpoint, role, token)
_LOCK = threading.Lock()


def store_of(path: Path, cat: Catalog) -> tuple:
    """What a held value belongs to: the file (its path, inode and last write: a store deleted and made again at
    the same path is another store) and the catalog generation."""
    try:
        st = os.stat(path)
        made: tuple = (st.st_ino, st.st_mtime_ns)
    except OSError:
        made = ()
    return (store_key(path), *made), cat.generation


def chunks(con: duckdb.DuckDBPyConnection, cat: Catalog, path: Path) -> list[Chunk]:
    """The store's stored-value blocks, adjacent blocks of one checkpoint and role joined and cut every
    ``CHUNK`` vectors; cached per file and catalog generation."""
    key = store_of(path, cat)
    with _LOCK:
        found = _CHUNKS.get(key)
    if found is None:
        sql, params = q.value_blocks()
        spans: list[list] = []
        for ckpt, first, last, role in con.execute(sql, params).fetchall():
            if spans and spans[-1][0] == ckpt and spans[-1][1] == role and spans[-1][3] + 1 == first:
                spans[-1][3] = last
            else:
                spans.append([ckpt, role, first, last])
        found = [Chunk(ckpt, role, a, min(a + CHUNK - 1, last))
                 for ckpt, role, first, last in spans for a in range(first, last + 1, CHUNK)]
        with _LOCK:
            _CHUNKS.clear()
            _CHUNKS[key] = found
    return found


def _intersect(ranges: Sequence[tuple[int, int]], pieces: Sequence[Chunk]) -> list[tuple[int, int, Chunk]]:
    return [(max(a, c.first), min(z, c.last), c) for a, z in ranges for c in pieces
            if max(a, c.first) <= min(z, c.last)]


def _without(ranges: Sequence[tuple[int, int]], covered: Sequence[tuple[int, int, Chunk]]) -> list[tuple[int, int]]:
    """The parts of ``ranges`` that no stored chunk covers."""
    out = []
    for a, z in ranges:
        at = a
        for lo, hi, _ in sorted((p for p in covered if p[0] >= a and p[1] <= z), key=lambda p: p[0]):
            if lo > at:
                out.append((at, lo - 1))
            at = max(at, hi + 1)
        if at <= z:
            out.append((at, z))
    return out


def _key(store: tuple, chunk: Chunk) -> tuple:
    """A held chunk's key: its store (``store_of``) and first vector id."""
    return (*store, chunk.first)


def load(con: duckdb.DuckDBPyConnection, chunk: Chunk) -> Held:
    """One chunk's values and statistics, read sequentially (Arrow; the list column's child buffer becomes the
    [n, d] matrix without a copy) and put in id order."""
    import numpy as np

    n = chunk.last - chunk.first + 1
    got = con.execute(*q.chunk_values(chunk.first, chunk.last)).fetch_arrow_table()
    ids = got.column(0).to_numpy()
    lists = got.column(1).combine_chunks()
    flat = lists.flatten().to_numpy(zero_copy_only=False)
    if len(ids) != n or n == 0 or flat.size % n:
        raise LensdbError(f"the stored values of vectors {chunk.first}…{chunk.last} are incomplete; run `lensdb "
                          "check`, then re-index that checkpoint with --replace.")
    values = flat.reshape(n, flat.size // n)
    order = np.argsort(ids, kind="stable")
    if not np.array_equal(ids[order], np.arange(chunk.first, chunk.last + 1)):
        raise LensdbError(f"the stored values of vectors {chunk.first}…{chunk.last} are incomplete; run `lensdb "
                          "check`, then re-index that checkpoint with --replace.")
    if not np.array_equal(order, np.arange(n)):
        values = values[order]
    stats = con.execute(*q.chunk_stats(chunk.first, chunk.last)).fetchnumpy()
    by_id = np.argsort(np.asarray(stats["vector_id"]), kind="stable")

    def column(name: str) -> Any:
        col = stats[name]
        filled = col.filled(np.nan) if np.ma.isMaskedArray(col) else col
        return np.asarray(filled, dtype=np.float32)[by_id]

    return Held(values, column("logit_mean"), column("logit_std"), column("top_zk"), column("bottom_zk"))


def held(con: duckdb.DuckDBPyConnection, store: tuple, chunk: Chunk) -> Held:
    """A chunk of the store ``store`` (``store_of``) from memory, else read (and kept, if it fits the budget)."""
    key = _key(store, chunk)
    found = CACHE.get(key)
    if found is None:
        found = load(con, chunk)
        CACHE.put(key, found)
    return found


@dataclass
class HeldBasis:
    """A checkpoint role's basis rows in memory ([V, d] float32, row t = token t)."""

    matrix: Any

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes)


def _load_basis(con: duckdb.DuckDBPyConnection, checkpoint_id: int, role: str) -> HeldBasis:
    import numpy as np

    got = con.execute(*q.basis_matrix(checkpoint_id, role)).fetch_arrow_table()
    ids = got.column(0).to_numpy()
    flat = got.column(1).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    n = len(ids)
    if not n or flat.size % n or not np.array_equal(np.sort(ids), np.arange(n)):
        raise LensdbError(f"checkpoint {checkpoint_id}'s basis rows for role {role!r} are incomplete; run `lensdb "
                          "check`, then re-index it with --replace.")
    matrix = flat.reshape(n, flat.size // n)
    return HeldBasis(matrix[np.argsort(ids, kind="stable")])


def preload(con: duckdb.DuckDBPyConnection, cat: Catalog, path: Path) -> int:
    """Hold as many chunks as the budget allows, the newest checkpoints first, then the basis rows that read them
    (a direction or a certificate then reads nothing from disk); the bytes held."""
    every = chunks(con, cat, path)
    store = store_of(path, cat)
    loads: list[tuple[tuple, Any]] = [(_key(store, c), functools.partial(load, con, c))
                                      for c in sorted(every, key=lambda c: (-c.checkpoint_id, c.first))]
    loads += [((*store, "basis", ckpt, role), functools.partial(_load_basis, con, ckpt, role))
              for ckpt, role in sorted({(c.checkpoint_id, c.role) for c in every}, key=lambda k: (-k[0], k[1]))]
    for key, read in loads:
        if CACHE.get(key) is None:
            found = read()
            if CACHE.used + found.nbytes > CACHE.budget or not CACHE.put(key, found):
                break
    return CACHE.used


def _basis_rows(con: duckdb.DuckDBPyConnection, path: Path, cat: Catalog, wanted: set[tuple[int, str]],
                token_ids: Sequence[int]) -> dict[tuple[int, str], Any]:
    """The basis rows of ``token_ids`` ([tokens, d] float32) for each (checkpoint, role) ``wanted``, in one
    statement for all that are not held (the most recently asked are held in memory)."""
    import numpy as np

    store = store_of(path, cat)
    keys = [(c, r, t) for c, r in sorted(wanted) for t in token_ids]
    have: dict[tuple[int, str, int], Any] = {}
    for c, r in wanted:
        basis = CACHE.get((*store, "basis", c, r))
        if isinstance(basis, HeldBasis):
            have.update({(c, r, t): basis.matrix[t] for t in token_ids if 0 <= t < basis.matrix.shape[0]})
    with _LOCK:
        have.update({k: _ROWS[(*store, *k)] for k in keys if k not in have and (*store, *k) in _ROWS})
    missing = sorted({k for k in keys if k not in have})
    if missing:
        sql, params = q.inline(q.basis_rows_of(missing))
        got = {(c, r, t): np.asarray(values, dtype=np.float32)
               for c, r, t, values in con.execute(sql, params).fetchall()}
        have.update(got)
        with _LOCK:
            for k, row in got.items():
                _ROWS[(*store, *k)] = row
                _ROWS.move_to_end((*store, *k))
            while len(_ROWS) > 4096:
                _ROWS.popitem(last=False)
    lacking = sorted({(c, r) for c, r, t in keys if (c, r, t) not in have})
    if lacking:
        raise LensdbError(f"checkpoint {lacking[0][0]} has no stored basis rows for role {lacking[0][1]!r}; run "
                          "`lensdb check`, then re-index it with --replace.")
    return {(c, r): np.stack([have[(c, r, t)] for t in token_ids]) for c, r in wanted}


def _z(scores: Any, mean: Any, std: Any, wsum: float, wnorm: float) -> Any:
    """z-scores as the index run computes them: float64 from the float32 statistics, then float32."""
    import numpy as np

    mean32 = np.asarray(mean, dtype=np.float32).astype(np.float64)
    std32 = np.asarray(std, dtype=np.float32).astype(np.float64)
    sd = np.where(std32 > 0, std32, 1.0) * wnorm
    return ((np.asarray(scores, dtype=np.float64) - wsum * mean32) / sd).astype(np.float32)


def certify(con: duckdb.DuckDBPyConnection, cat: Catalog, path: Path,
            groups: list[tuple[list[tuple[int, int]], list[int]]], side: str, n: int,
            stored: list[tuple], bounds: "Bounds | None" = None) -> tuple[list[tuple], Outcome]:
    """Complete the stored hits of a token search into the exact top ``n`` (rows as ``sql.hits_in_ranges``
    returns them, plus exactly scored rows whose rank is None), with its ``Outcome``.

    ``stored``: the best ``n`` stored hits, strongest first; ``groups``: per vocabulary, the vector-id ranges
    searched and the token ids asked for; ``bounds``: the vectors' bounds held in memory (``queries.postings``),
    which answer the test over vectors without stored values without a statement."""
    sign = 1.0 if side == "top" else -1.0
    out = Outcome()
    every = chunks(con, cat, path)
    store = store_of(path, cat)
    best = list(stored)
    for ranges, token_ids in groups:
        bound = best[n - 1][5] if len(best) >= n else None  # the n-th best z so far: what a newcomer must beat
        pieces = _intersect(ranges, every)
        bare = _without(ranges, pieces)
        in_memory = bounds is not None and bound == bound  # a NaN bound (DuckDB's NaN order) is left to SQL
        if bare and (bounds.any_beyond(bare, side, bound) if in_memory else  # type: ignore[union-attr]
                     con.execute(*q.unvalued_beyond(bare, side, bound)).fetchone()[0]):  # type: ignore[index]
            out.inexact(NO_VALUES)
        if not pieces:
            continue
        holds = [CACHE.get(_key(store, c)) for _, _, c in pieces]
        if all(h is not None for h in holds):
            found, scored = _certify_held(con, cat, path, pieces, holds, token_ids, side, bound, n)  # type: ignore[arg-type]
            out.scored += scored
        else:
            sql, params = q.certificate_scores([(a, z, c.checkpoint_id, c.role) for a, z, c in pieces],
                                               token_ids, side, bound, n)
            got = con.execute(sql, params).fetchall()
            found = [r[:4] for r in got]
            out.scored += got[0][4] if got else 0
        seen = {(r[0], r[3]) for r in best}
        best += [(vid, side, None, tid, float(score), float(z), None) for vid, tid, score, z in found
                 if (vid, tid) not in seen]
        best.sort(key=lambda r: (-sign * r[5], r[0]))
        del best[n:]
    return best, out


def _certify_held(con: duckdb.DuckDBPyConnection, cat: Catalog, path: Path, pieces: list[tuple[int, int, Chunk]],
                  holds: list[Held], token_ids: list[int], side: str, bound: float | None,
                  n: int) -> tuple[list[tuple], int]:
    """The candidates of ``pieces`` scored from memory: the ``n`` strongest (vector id, token id, score, z) rows
    of each chunk, and how many (vector, token) pairs were scored."""
    import numpy as np

    found: list[tuple] = []
    beyond = []
    for (a, z, chunk), h in zip(pieces, holds, strict=True):
        at = h.beyond(side, bound)
        at = at[(at >= a - chunk.first) & (at <= z - chunk.first)]
        if at.size:
            beyond.append((chunk, h, at))
    rows_of = _basis_rows(con, path, cat, {(c.checkpoint_id, c.role) for c, _, _ in beyond}, token_ids) \
        if beyond else {}
    sign = 1.0 if side == "top" else -1.0
    scored = 0
    for chunk, h, at in beyond:
        rows = rows_of[(chunk.checkpoint_id, chunk.role)].astype(np.float64)
        scores = h.values[at].astype(np.float64) @ rows.T  # double, as sql.certificate_scores: the same answer
        zs = _z(scores, h.mean[at, None], h.std[at, None], 1.0, 1.0)
        scored += zs.size
        for k in _strongest(-sign * zs.reshape(-1), n).tolist():  # only the n best of a chunk can be kept
            i, j = divmod(k, len(token_ids))
            found.append((chunk.first + int(at[i]), token_ids[j], float(np.float32(scores[i, j])), float(zs[i, j])))
    return found, scored


# ---- directions -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Term:
    """One typed word of a direction with its weight (a word's several token ids share it)."""

    word: str | int
    weight: float


def direction_terms(plus: Sequence[str | int], minus: Sequence[str | int], text: str | None) -> list[Term]:
    """The weighted terms of a direction: the mean of ``plus`` (or of the words of ``text``) minus the mean of
    ``minus``."""
    words: list[str | int] = [*plus, *(split_text(text) if text else [])]
    terms = [Term(w, 1.0 / len(words)) for w in words]
    return terms + [Term(w, -1.0 / len(minus)) for w in minus]


def split_text(text: str) -> list[str]:
    """A text's words and punctuation marks, each looked up like a typed word in every vocabulary."""
    return re.findall(r"\w+|[^\w\s]", text)


def scan(con: duckdb.DuckDBPyConnection, cat: Catalog, path: Path, weights: dict[int, dict[int, float]],
         ranges: dict[int, list[tuple[int, int]]], side: str, n: int,
         every: int) -> tuple[list[tuple[int, float, float]], Outcome]:
    """The ``n`` strongest vectors for a direction: ``weights`` per vocabulary (token id → weight), ``ranges``
    per vocabulary the vector ids searched (``every`` vectors in all). Returns (vector id, score, z) rows, strongest
    first, with the ``Outcome``."""
    import numpy as np

    sign = 1.0 if side == "top" else -1.0
    out = Outcome()
    stored = chunks(con, cat, path)
    store = store_of(path, cat)
    found: list[tuple[int, float, float]] = []
    covered = 0
    for vocab_id, w in weights.items():
        token_ids = sorted(w)
        wv = np.array([w[t] for t in token_ids], dtype=np.float64)
        wsum, wnorm = float(wv.sum()), float(np.sqrt((wv ** 2).sum()))
        pieces = _intersect(ranges.get(vocab_id, []), stored)
        rows_of = _basis_rows(con, path, cat, {(c.checkpoint_id, c.role) for _, _, c in pieces}, token_ids) \
            if pieces else {}
        dirs = {key: (wv @ rows.astype(np.float64)).astype(np.float32) for key, rows in rows_of.items()}
        for a, z, chunk in pieces:
            key = (chunk.checkpoint_id, chunk.role)
            h = held(con, store, chunk)
            part = slice(a - chunk.first, z - chunk.first + 1)
            scores = h.values[part] @ dirs[key]
            zs = _z(scores, h.mean[part], h.std[part], wsum, wnorm)
            found += [(a + i, float(scores[i]), float(zs[i])) for i in _strongest(-sign * zs, n).tolist()]
            found.sort(key=lambda r: (-sign * r[2], r[0]))
            del found[n:]
            covered += z - a + 1
            out.scored += z - a + 1
    if covered < every:
        out.inexact(f"{every - covered} of the {every} vectors searched have no stored values (indexed with "
                    "--no-vectors, before schema version 8, or head-map pairs) and are not ranked")
    return found, out


def _strongest(key: Any, n: int) -> Any:
    """Offsets of the ``n`` smallest keys, ties by offset (a partition first: a chunk holds up to ``CHUNK``)."""
    import numpy as np

    at = np.arange(key.size)
    if key.size > n:
        at = np.flatnonzero(key <= np.partition(key, n - 1)[n - 1])
    return at[np.lexsort((at, key[at]))][:n]


def label(plus: Sequence[str | int], minus: Sequence[str | int], text: str | None) -> str:
    """How a direction is shown in its hits' ``token`` field: ``paris + berlin − london``, ``"a text"``."""
    shown = " + ".join(str(w) for w in plus) if plus else (f'"{text}"' if text else "")
    return shown + "".join(f" − {w}" for w in minus)
