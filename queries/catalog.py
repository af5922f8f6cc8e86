"""The small, slowly changing part of a store held in memory: checkpoints with their models and
vocabularies, and the vector-id block of every (checkpoint, component, layer, head, expert) unit.

Token lookups are the hot path ("who promotes X"): with these in memory, a lookup filters and labels its
hits by vector-id ranges instead of joining the vectors table and the latest-checkpoint view. A catalog is
shared by every connection to the same file and rebuilt when the store's generation (count, max and sum of
checkpoint ids) changes, so a long-lived service sees new index runs at once.

``Lens.warm`` adds each vocabulary's typed forms (``Words``): exact token resolution then needs no statement.
They are cached per file by vocabulary id and content hash (a store rebuilt at the same path may reuse ids).
"""

import bisect
import dataclasses
import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import duckdb

from queries import sql as q
from queries.filters import chooses
from schema.errors import InvalidFilter


class CheckpointRef(NamedTuple):
    checkpoint_id: int
    model: str
    vocab_id: int
    label: str
    step: int | None
    latest: bool


class Unit(NamedTuple):
    """One contiguous block of vector ids: a (checkpoint, component, layer, head) of one run."""

    checkpoint_id: int
    component: str
    layer: int
    head: int | None
    first_id: int
    last_id: int
    first_index: int
    expert: int | None = None
    role: str = "writes"  # writes, reads or pairs (vector_units.role): what the search's role filter reads
    dictionary_id: int | None = None  # a dictionary's latents (``dictionaries``); None for a model's own vectors


@dataclass
class Catalog:
    generation: tuple
    checkpoints: dict[int, CheckpointRef]
    models: dict[str, int]
    units: list[Unit]
    vocab_hashes: dict[int, str] = field(default_factory=dict)
    dictionaries: dict[int, str] = field(default_factory=dict)  # dictionary id → name
    snapshot: tuple | None = None  # the unchanging state it was read from, if any (``catalog``)
    memo: dict = field(default_factory=dict)  # what readers derive from it alone (a search's ranges per filter)
    _starts: list[int] = field(default_factory=list)

    def chosen(self, model: str | None, checkpoint: str | None) -> list[CheckpointRef]:
        """The checkpoints a choice picks (``queries.filters.chooses``), of one model or of every model."""
        return [r for r in self.checkpoints.values()
                if (model is None or r.model == model) and chooses(checkpoint, r.label, r.latest)]

    def vector_id(self, checkpoint_id: int, component: str, layer: int, head: int | None, index: int,
                  expert: int | None = None, dictionary: str | None = None) -> int | None:
        """The id of one vector from the unit blocks (no statement), or None where no unit holds it (or, without
        ``dictionary``, where several dictionaries' units could)."""
        found = None
        for u in self.units:
            if (u.checkpoint_id, u.component, u.layer, u.head, u.expert) == (
                    checkpoint_id, component, layer, head, expert) and \
                    (dictionary is None or self.dictionaries.get(u.dictionary_id or -1) == dictionary) and \
                    u.first_index <= index <= u.first_index + u.last_id - u.first_id:
                if found is not None:
                    return None  # latents of two dictionaries at one place: the caller names the dictionary
                found = u.first_id + index - u.first_index
        return found

    def unit_of(self, vector_id: int) -> Unit:
        """The unit a vector id belongs to (units are sorted by first id and do not overlap)."""
        if not self._starts:
            self._starts = [u.first_id for u in self.units]
        return self.units[bisect.bisect_right(self._starts, vector_id) - 1]


_CATALOGS: dict[str, Catalog] = {}
_GLOBAL = threading.Lock()


def store_key(path: Path) -> str:
    """The store's absolute path, which keys what this process holds of it; remembered for absolute paths
    (``Path.resolve`` costs ~40 µs, several times per lookup), resolved each time for relative ones (the working
    folder may change)."""
    p = Path(path)
    return _resolved(p) if p.is_absolute() else str(p.resolve())


@functools.lru_cache(maxsize=256)
def _resolved(path: Path) -> str:
    return str(path.resolve())


def catalog(con: duckdb.DuckDBPyConnection, path: Path, snapshot: tuple | None = None) -> Catalog:
    """The catalog of the store at ``path`` as ``con`` sees it (rebuilt when the store changed). ``snapshot``: a
    name for a state of the store that cannot change (``readonly.open_hardened``): a catalog built under it is
    reused without a statement (~1.4 ms of a warm lookup); without one, the store's generation is asked."""
    key = store_key(path)
    with _GLOBAL:
        cached = _CATALOGS.get(key)
    if cached is not None and snapshot is not None and cached.snapshot == snapshot:
        return cached
    if cached is not None and cached.generation == tuple(con.execute(q.store_generation()[0]).fetchone() or ()):
        if snapshot is not None:
            with _GLOBAL:
                _CATALOGS[key] = dataclasses.replace(cached, snapshot=snapshot)
        return cached
    rows = con.execute(q.checkpoint_catalog()[0]).fetchall()
    ids = [r[0] for r in rows]
    # the generation of the snapshot just read, as store_generation() computes it (one statement less)
    dictionaries = dict(con.execute(q.dictionary_names()[0]).fetchall())
    generation: tuple = ((len(ids), max(ids), sum(ids)) if ids else (0, None, None)) + (
        len(dictionaries), sum(dictionaries))
    checkpoints = {r[0]: CheckpointRef(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows}
    units = [Unit(*r) for r in con.execute(q.vector_units()[0]).fetchall()]
    built = Catalog(generation, checkpoints, {r[1]: r[2] for r in rows}, units, vocab_hashes={r[2]: r[6] for r in rows},
                    dictionaries=dictionaries, snapshot=snapshot)
    with _GLOBAL:
        _CATALOGS[key] = built
    return built


class Words(NamedTuple):
    """One vocabulary's typed forms in memory: ``ids`` maps a word, raw spelling or display text to the ids of
    the tokens that have it (what ``sql.resolve_token`` finds case-sensitively), ascending."""

    ids: dict[str, tuple[int, ...]]
    token: dict[int, str]
    display: dict[int, str]


_WORDS: dict[tuple[str, int, str], Words] = {}


def loaded_words(cat: Catalog, path: Path) -> dict[int, Words] | None:
    """Every vocabulary of ``cat`` held in memory, by vocab id, or None while one is not (then resolve in SQL)."""
    key = store_key(path)
    found = {vid: _WORDS.get((key, vid, h)) for vid, h in cat.vocab_hashes.items()}
    return None if any(w is None for w in found.values()) else found  # type: ignore[return-value]


def load_words(con: duckdb.DuckDBPyConnection, cat: Catalog, path: Path) -> int:
    """Hold in memory the vocabularies of ``cat`` not held yet; returns how many were loaded."""
    key = store_key(path)
    missing = {vid: h for vid, h in cat.vocab_hashes.items() if (key, vid, h) not in _WORDS}
    if not missing:
        return 0
    ids: dict[int, dict[str, set[int]]] = {vid: {} for vid in missing}
    token: dict[int, dict[int, str]] = {vid: {} for vid in missing}
    display: dict[int, dict[int, str]] = {vid: {} for vid in missing}
    for vid, tid, word, raw, shown in con.execute(*q.inline(q.all_words(sorted(missing)))).fetchall():
        forms = ids[vid]
        for form in (word, raw, shown):
            forms.setdefault(form, set()).add(tid)
        token[vid][tid] = raw
        display[vid][tid] = shown
    with _GLOBAL:
        for vid, h in missing.items():
            _WORDS[(key, vid, h)] = Words({f: tuple(sorted(t)) for f, t in ids[vid].items()}, token[vid], display[vid])
    return len(missing)


ROLES = ("writes", "reads", "all")
"""What a search's ``role`` may be: vectors that write into the residual stream (the default: these are what
can *promote* a token), vectors that read from it, or both. A head map's token pairs (role ``pairs``) come
only when their component is named."""


def select_units(units: list[Unit], checkpoint_ids: set[int], component: str | None = None, layer: int | None = None,
                 head: int | None = None, expert: int | None = None, role: str | None = None) -> list[Unit]:
    """The unit blocks of the chosen checkpoints a search looks at, or ``InvalidFilter`` naming what exists when a
    filter names nothing there (a misspelt component, a layer or head out of range, a head on a component without
    heads). ``role`` None: writers, unless ``component`` names one (an explicit component wins over the default);
    pairs only by component."""
    if role is not None and role not in ROLES:
        raise InvalidFilter(f"role must be one of {', '.join(ROLES)}, not {role!r}.")
    pool = [u for u in units if u.checkpoint_id in checkpoint_ids]
    if not pool:
        return []
    if component is not None:
        names = sorted({u.component for u in pool})
        if component not in names:
            raise InvalidFilter(f"no component {component!r} in the searched checkpoints; components: "
                                f"{', '.join(names)}.")
        pool = [u for u in pool if u.component == component]
        if role not in (None, "all") and pool[0].role != role:
            raise InvalidFilter(f"component {component!r} {pool[0].role if pool[0].role != 'pairs' else 'holds pairs'}"
                                f"; role {role!r} leaves it out (drop --role, or use --role all).")
    else:
        wanted = ("writes", "reads") if role == "all" else (role or "writes",)
        pool = [u for u in pool if u.role in wanted]
        if not pool:
            return []
    for name, value in (("layer", layer), ("head", head), ("expert", expert)):
        if value is None:
            continue
        have = sorted({getattr(u, name) for u in pool} - {None})
        if not have:
            without = component or "the searched components"
            with_it = sorted({u.component for u in units if u.checkpoint_id in checkpoint_ids
                              and getattr(u, name) is not None})
            raise InvalidFilter(f"{without} has no {name}s; {name} applies to "
                                f"{', '.join(with_it) or 'no indexed component'}.")
        if value not in have:
            raise InvalidFilter(f"{name} {value} is out of range: {name}s run {_spans(have)}"
                                + (f" for {component}." if component else "."))
        pool = [u for u in pool if getattr(u, name) == value]
    return pool


def _spans(values: list[int]) -> str:
    """``0–3`` or ``0–3, 5`` for sorted integers."""
    out: list[str] = []
    start = prev = values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(str(start) if start == prev else f"{start}–{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)
