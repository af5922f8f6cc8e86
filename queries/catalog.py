"""The small, slowly changing part of a store held in memory: checkpoints with their models and
vocabularies, and the vector-id block of every (checkpoint, component, layer, head) unit.

Token lookups are the hot path ("who promotes X"): with these in memory, a lookup filters and labels its
hits by vector-id ranges instead of joining the vectors table and the latest-checkpoint view. A catalog is
shared by every connection to the same file and rebuilt when the store's generation (count, max and sum of
checkpoint ids) changes, so a long-lived service sees new index runs at once.
"""

import bisect
import threading
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from queries import sql as q


@dataclass(frozen=True)
class CheckpointRef:
    checkpoint_id: int
    model: str
    vocab_id: int
    label: str
    step: int | None
    latest: bool


@dataclass(frozen=True)
class Unit:
    """One contiguous block of vector ids: a (checkpoint, component, layer, head) of one run."""

    checkpoint_id: int
    component: str
    layer: int
    head: int | None
    first_id: int
    last_id: int
    first_index: int


@dataclass
class Catalog:
    generation: tuple
    checkpoints: dict[int, CheckpointRef]
    models: dict[str, int]
    units: list[Unit]
    has_head_pairs: bool = True
    _starts: list[int] = field(default_factory=list)

    def unit_of(self, vector_id: int) -> Unit:
        """The unit a vector id belongs to (units are sorted by first id and do not overlap)."""
        if not self._starts:
            self._starts = [u.first_id for u in self.units]
        return self.units[bisect.bisect_right(self._starts, vector_id) - 1]


_CATALOGS: dict[str, Catalog] = {}
_GLOBAL = threading.Lock()


def catalog(con: duckdb.DuckDBPyConnection, path: Path) -> Catalog:
    """The catalog of the store at ``path`` as ``con`` sees it (rebuilt when the store changed)."""
    generation = tuple(con.execute(q.store_generation()[0]).fetchone() or ())
    key = str(path.resolve())
    with _GLOBAL:
        cached = _CATALOGS.get(key)
        if cached is not None and cached.generation == generation:
            return cached
    checkpoints = {r[0]: CheckpointRef(r[0], r[1], r[2], r[3], r[4], bool(r[5]))
                   for r in con.execute(q.checkpoint_catalog()[0]).fetchall()}
    models = {name: vocab_id for name, vocab_id in con.execute(q.model_vocabularies()[0]).fetchall()}
    units = [Unit(*r) for r in con.execute(q.vector_units()[0]).fetchall()]
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    built = Catalog(generation, checkpoints, models, units, has_head_pairs="head_pairs" in tables)
    with _GLOBAL:
        _CATALOGS[key] = built
    return built
