"""Exact search: who promotes (or suppresses) a token or any direction, among *every* indexed vector.

**A token, with a certificate.** Each vector stores the z-score of its k-th token per side (``vectors.top_zk``,
``bottom_zk``): a vector whose top list lacks X has z(X) ≤ its top z_k (bottom: ≥ its bottom z_k). The stored
hits give the n-th best z found, t; only vectors whose bound beats t and whose list lacks X can change the
answer. Those are scored exactly, strongest bound first, from their stored values and the basis row of X
(``vector_values`` · ``basis_rows``), until the next bound no longer beats the n-th best z (Fagin's threshold
rule). The answer is then the true top n by z-score among all vectors searched; where a vector that could enter
it has no stored values, the rows say ``exact: false`` and why.

**A direction.** ``u = Σ w_t · row_t`` over the basis rows of the asked tokens (a set: w = 1/|set|; a contrast
subtracts the other set's mean; a text: the mean over its words). A vector's score is v·u; over tokens drawn
independently and uniformly from the vocabulary its mean is (Σw)·logit_mean and its variance (Σw²)·logit_std²,
so z = (v·u − Σw·mean) / (std·√Σw²): for one token this is the usual z-score, for a contrast of two tokens it is
(z_a − z_b)/√2. Every stored vector in scope is scored: one GEMV per block of stored values, never a V-wide
matrix, computed by DuckDB where the values lie (``list_dot_product``): only (id, score) pairs reach Python.

numpy is imported inside the functions that compute; the SQL is built in ``queries.sql``.
"""

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from queries import sql as q
from queries.catalog import Catalog

BATCH = 2048  # candidates scored per round of the threshold rule
SCAN_ROWS = 65536  # stored vectors per block of a direction scan (scored in DuckDB: list_dot_product)


@dataclass(frozen=True)
class Block:
    """Vector ids ``first…last`` of a checkpoint whose values are stored, read by the basis rows of ``role``."""

    checkpoint_id: int
    first: int
    last: int
    role: str


@dataclass
class Outcome:
    """How exact an answer is: ``exact`` with the reason when it is not, and what it cost."""

    exact: bool = True
    why: str | None = None
    scored: int = 0  # vectors scored exactly from their stored values

    def inexact(self, why: str) -> None:
        self.exact = False
        self.why = self.why or why


_BLOCKS: dict[tuple[str, tuple], list[Block]] = {}
_LOCK = threading.Lock()


def value_blocks(con: duckdb.DuckDBPyConnection, cat: Catalog, path: Path) -> list[Block]:
    """The stored-value blocks of the store, cached per file and catalog generation."""
    key = (str(path), cat.generation)
    with _LOCK:
        found = _BLOCKS.get(key)
    if found is None:
        sql, params = q.value_blocks()
        found = [Block(*r) for r in con.execute(sql, params).fetchall()]
        with _LOCK:
            _BLOCKS.clear()
            _BLOCKS[key] = found
    return found


def _intersect(ranges: Sequence[tuple[int, int]], blocks: Sequence[Block]) -> list[tuple[int, int, Block]]:
    return [(max(a, b.first), min(z, b.last), b) for a, z in ranges for b in blocks
            if max(a, b.first) <= min(z, b.last)]


def _covered(ranges: Sequence[tuple[int, int]], blocks: Sequence[Block]) -> int:
    return sum(z - a + 1 for a, z, _ in _intersect(ranges, blocks))


def _rows(con: duckdb.DuckDBPyConnection, built: q.Sql) -> list[tuple]:
    sql, params = q.inline(built)
    return con.execute(sql, params).fetchall()


def _basis_rows(con: duckdb.DuckDBPyConnection, checkpoint_id: int, role: str, token_ids: Sequence[int]) -> Any:
    import numpy as np

    got = dict(_rows(con, q.basis_rows_of(checkpoint_id, role, sorted(set(token_ids)))))
    return np.array([got[t] for t in token_ids], dtype=np.float32)


def _z(scores: Any, mean: Any, std: Any, wsum: float, wnorm: float) -> Any:
    """z-scores as the index run computes them: float64 from the float32 statistics, then float32."""
    import numpy as np

    mean32 = np.asarray(mean, dtype=np.float32).astype(np.float64)
    std32 = np.asarray(std, dtype=np.float32).astype(np.float64)
    sd = np.where(std32 > 0, std32, 1.0) * wnorm
    return ((np.asarray(scores, dtype=np.float64) - wsum * mean32) / sd).astype(np.float32)


def certify(con: duckdb.DuckDBPyConnection, cat: Catalog, path: Path,
            groups: list[tuple[list[tuple[int, int]], list[int]]], side: str, n: int,
            stored: list[tuple]) -> tuple[list[tuple], Outcome]:
    """Complete the stored hits of a token search into the exact top ``n`` (rows as ``sql.hits_in_ranges``
    returns them, plus exactly scored rows whose rank is None), with its ``Outcome``.

    ``stored``: the best ``n`` stored hits, strongest first; ``groups``: per vocabulary, the vector-id ranges
    searched and the token ids asked for."""

    sign = 1.0 if side == "top" else -1.0
    out = Outcome()
    blocks = value_blocks(con, cat, path)
    best = list(stored)

    def threshold() -> float:
        return sign * best[n - 1][5] if len(best) >= n else float("-inf")

    for ranges, token_ids in groups:
        offset = 0
        while True:
            t = threshold()
            cands = _rows(con, q.certificate_candidates(ranges, token_ids, side, sign * t if t > float("-inf")
                                                        else None, BATCH, offset))
            if not cands:
                break
            offset += len(cands)
            have: dict[tuple[int, str], list[tuple]] = {}
            for vid, _zk, mean, std in cands:
                blk = next((b for b in blocks if b.first <= vid <= b.last), None)
                if blk is None:
                    out.inexact("vectors that could rank here have no stored values (indexed with --no-vectors, "
                                "before schema version 6, or head-map pairs)")
                    continue
                have.setdefault((blk.checkpoint_id, blk.role), []).append((vid, mean, std))
            seen = {(r[0], r[3]) for r in best}
            for (ckpt, role), members in have.items():
                ids = [m[0] for m in members]
                scores, z = _score(con, ckpt, role, token_ids, members)
                out.scored += len(ids)
                for i, vid in enumerate(ids):
                    for j, tid in enumerate(token_ids):
                        if (vid, tid) not in seen:
                            best.append((vid, side, None, tid, float(scores[i, j]), float(z[i, j]), None))
            best.sort(key=lambda r: (-sign * r[5], r[0]))
            del best[n:]
            last_bound = cands[-1][1]
            if len(cands) < BATCH or (last_bound is not None and sign * last_bound <= threshold()):
                break
    return best, out


def _score(con: duckdb.DuckDBPyConnection, checkpoint_id: int, role: str, token_ids: list[int],
           members: list[tuple]) -> tuple[Any, Any]:
    """Exact scores and z-scores ``[vectors, tokens]`` of stored vectors (id, mean, std) for ``token_ids``: one
    statement that scores them where their values lie (``list_dot_product``)."""
    import numpy as np

    rows = _basis_rows(con, checkpoint_id, role, token_ids)
    ids = [m[0] for m in members]
    got = con.execute(*q.scores_of(ids, rows.tolist())).fetchnumpy()
    found = np.asarray(got["vector_id"])
    at = np.searchsorted(found, np.asarray(ids, dtype=np.int64))
    scores = np.stack([np.asarray(got[f"s{j}"], dtype=np.float32) for j in range(len(token_ids))], axis=1)[at]
    stats = np.array([m[1:] for m in members], dtype=np.float64)
    return scores, _z(scores, stats[:, :1], stats[:, 1:], 1.0, 1.0)


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
    blocks = value_blocks(con, cat, path)
    found: list[tuple[int, float, float]] = []
    covered = 0
    for vocab_id, w in weights.items():
        token_ids = sorted(w)
        wv = np.array([w[t] for t in token_ids], dtype=np.float64)
        wsum, wnorm = float(wv.sum()), float(np.sqrt((wv ** 2).sum()))
        dirs: dict[tuple[int, str], Any] = {}
        for a, z, blk in _intersect(ranges.get(vocab_id, []), blocks):
            key = (blk.checkpoint_id, blk.role)
            if key not in dirs:
                rows = _basis_rows(con, blk.checkpoint_id, blk.role, token_ids).astype(np.float64)
                dirs[key] = (wv @ rows).astype(np.float32)
            covered += z - a + 1
            for start in range(a, z + 1, SCAN_ROWS):
                stop = min(z, start + SCAN_ROWS - 1)
                got = con.execute(*q.direction_scores(start, stop, dirs[key].tolist())).fetchnumpy()
                order = np.argsort(got["vector_id"], kind="stable")
                ids, scores = np.asarray(got["vector_id"])[order], np.asarray(got["score"], dtype=np.float32)[order]
                stats = np.array(_rows(con, q.vector_stats_in_range(start, stop)), dtype=np.float64).reshape(-1, 2)
                zs = _z(scores, stats[:, 0], stats[:, 1], wsum, wnorm)
                keep = np.argsort(-sign * zs, kind="stable")[:n]
                found.extend((int(ids[i]), float(scores[i]), float(zs[i])) for i in keep)
                found.sort(key=lambda r: (-sign * r[2], r[0]))
                del found[n:]
                out.scored += len(ids)
    if covered < every:
        out.inexact(f"{every - covered} of the {every} vectors searched have no stored values (indexed with "
                    "--no-vectors, before schema version 6, or head-map pairs) and are not ranked")
    return found, out


def label(plus: Sequence[str | int], minus: Sequence[str | int], text: str | None) -> str:
    """How a direction is shown in its hits' ``token`` field: ``paris + berlin − london``, ``"a text"``."""
    shown = " + ".join(str(w) for w in plus) if plus else (f'"{text}"' if text else "")
    return shown + "".join(f" − {w}" for w in minus)


