"""The Python API: typed questions in, pydantic rows out. All SQL comes from ``queries.sql``."""

import functools
import json
import time
import weakref
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
from pydantic import ValidationError

from queries import exact, head_rows, postings
from queries import sql as q
from queries.catalog import Catalog, catalog, load_words, loaded_words, select_units, store_key
from queries.filters import HitFilter, token_list
from queries.frames import TokenHits, with_frames
from queries.readonly import DEFAULT_MAX_BYTES, DEFAULT_RSS_BUDGET_MB, Limits, open_hardened, run_readonly
from queries.resolve import Resolution, resolve
from queries.rows import (
    Alignment,
    AlignmentInfo,
    ChangedVector,
    CheckpointInfo,
    ComponentCount,
    HeadRow,
    ModelDetail,
    ModelInfo,
    RunInfo,
    SourceInfo,
    SqlResult,
    StepInfo,
    TokenHit,
    TokenMatch,
    TokenRankStep,
    TokenScore,
    TraceHead,
    TraceNeuron,
    TraceState,
    TraceSummary,
    TraceTerm,
    TraceToken,
    TraceView,
    UnitMatch,
    VectorInfo,
    VectorPage,
    VectorStep,
    VectorView,
    WarmInfo,
    WatchItemInfo,
    WatchRunInfo,
)
from queries.rows import LayerPair as LayerPairRow
from schema.errors import InvalidFilter, LensdbError, NotFound, UnknownToken

if TYPE_CHECKING:
    from queries.integrity import CheckReport


@with_frames
class Lens:
    """A read-only view of one store. Create with ``queries.connect(path)``; ``queries.remote.RemoteLens`` asks
    the same questions of a running service (tests/test_lens_both.py runs one suite against both)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, release: Callable[[], None] | None = None,
                 snapshot: tuple | None = None) -> None:
        """``release``: gives ``con`` back to whoever lent it (``readonly.open_hardened``), on ``close`` or when
        this Lens is garbage-collected; without it ``close`` closes ``con``. ``snapshot``: names a state of the
        store that cannot change under ``con`` (a read-only instance): its catalog is then reused without asking
        the store whether it changed (``queries.catalog``)."""
        self.con = con
        self.path = path
        self.snapshot = snapshot
        self._release = weakref.finalize(self, release or con.close)

    def close(self) -> None:
        self._release()

    def __enter__(self) -> "Lens":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, built: q.Sql) -> list[tuple]:
        sql, params = q.inline(built)
        return self.con.execute(sql, params).fetchall()

    def _catalog(self) -> Catalog:
        return catalog(self.con, self.path, self.snapshot)

    def _check_model(self, model: str | None, cat: Catalog | None = None) -> None:
        if model is None:  # nothing to check, and no catalog fetch on the lookup hot path
            return
        names = sorted((cat or self._catalog()).models)
        if model not in names:
            raise NotFound(f"no model {model!r} in {self.path}; indexed models: {', '.join(names) or 'none yet'}.")

    def _resolve(self, token: str | int, model: str | None, cat: Catalog | None = None) -> list[TokenMatch]:
        """Every (model, token id) that ``token`` names (see ``resolution``); a clear error if none."""
        return self._resolution(token, model, cat).matches

    def resolution(self, token: str | int, model: str | None = None) -> Resolution:
        """How ``token`` resolves in each model's own vocabulary (``queries.resolve``): the matched tokens with
        the form that matched, per model, and the models with no match; ``UnknownToken`` when no model has it."""
        return self._resolution(token, model)

    def _resolution(self, token: str | int, model: str | None = None, cat: Catalog | None = None) -> Resolution:
        cat = cat or self._catalog()
        self._check_model(model, cat)
        found = resolve(self.con, cat, self.path, token, model)
        if not found.matches:
            where = f"model {model!r}" if model else "any indexed vocabulary"
            hint = ""
            if isinstance(token, str):
                near = [r[0] for r in self._rows(q.similar_words(token))]
                hint = f" Similar tokens: {', '.join(near)}." if near else ""
            raise UnknownToken(f"token {token!r} is not in {where}.{hint}")
        return found

    def warm(self, value_cache_mb: int | None = None) -> WarmInfo:
        """Bring what token lookups read into memory: every vocabulary's typed forms (exact lookups then resolve
        without a statement), the rows of the token-sorted tables with the vectors' bounds (``queries.postings``:
        a token lookup and its certificate then run no statement; where they do not fit the budget, the tables'
        blocks in DuckDB's buffer pool instead, so a lookup at least reads nothing from disk), and the stored
        vectors, newest checkpoints first, as far as the value cache's budget allows (``value_cache_mb``, for this
        process; default a quarter of the memory; the postings come first): exact answers and direction scans then
        score them from memory (``queries.exact``). ``lensdb serve`` runs it at start and after each index job; it
        costs one read of those tables (a few seconds per 100 M rows) and one of the stored vectors."""
        started = time.perf_counter()
        if value_cache_mb is not None:
            if value_cache_mb < 0:
                raise InvalidFilter(f"value_cache_mb must be 0 or more, not {value_cache_mb}.")
            exact.CACHE.budget = value_cache_mb << 20
        cat = self._catalog()
        loaded = load_words(self.con, cat, self.path)
        found = postings.warm(self.con, cat, self.path)  # its read brings the tables' blocks in, as warm_scan does
        rows = found.rows if found is not None else \
            sum(int(self._rows(q.warm_scan(table))[0][0]) for table in q.SORTED_BY_TOKEN)
        kept = found.nbytes if found is not None else 0
        held = exact.preload(self.con, cat, self.path) - kept
        return WarmInfo(vocabularies=len(cat.vocab_hashes), loaded_vocabularies=loaded, rows=rows,
                        postings_mb=round(kept / (1 << 20), 1), values_mb=round(held / (1 << 20), 1),
                        seconds=time.perf_counter() - started)

    def tokens(self, token: str | int, model: str | None = None) -> TokenHits[TokenMatch]:
        """How ``token`` (a word, a raw token spelling, or an int id) resolves in each model's vocabulary.

        Per model, a word matches its lookup form, raw spelling or display text exactly where it can (``paris``
        finds ``Ġparis``, ``paris`` and ``##paris``), else case-insensitively, else without its marker; each
        match says which (``form``), and ``.missing`` names the models with no match (``queries.resolve``).
        """
        found = self.resolution(token, model)
        return TokenHits(found.matches, TokenMatch, matches=found.matches, missing=found.missing, token=token)

    @staticmethod
    def _units(cat: Catalog, checkpoint_ids: set[int], f: HitFilter) -> list:
        """The unit blocks a search reads: the filter's role, component, layer, head, expert and dictionary."""
        units = select_units(cat.units, checkpoint_ids, f.component, f.layer, f.head, f.expert, f.role)
        if f.dictionary is not None:
            if f.dictionary not in cat.dictionaries.values():
                raise InvalidFilter(f"no dictionary {f.dictionary!r} in the store; dictionaries: "
                                    f"{', '.join(sorted(set(cat.dictionaries.values()))) or 'none indexed'}.")
            units = [u for u in units if cat.dictionaries.get(u.dictionary_id or -1) == f.dictionary]
        return units

    def _ranges(self, cat: Catalog, f: HitFilter) -> dict[int, list[tuple[int, int]]]:
        """Per vocabulary, the joined vector-id ranges a search with filter ``f`` reads: the same for every token,
        so the catalog remembers them (it is rebuilt when the store changes)."""
        key = ("ranges", f.model, f.checkpoint, f.component, f.layer, f.head, f.expert, f.role, f.dictionary)
        found = cat.memo.get(key)
        if found is None:
            refs = cat.chosen(f.model, f.checkpoint)
            if f.checkpoint not in (None, "all") and not refs:
                raise NotFound(f"no checkpoint {f.checkpoint!r}" + (f" in model {f.model!r}." if f.model
                                                                     else " in any model."))
            spans: dict[int, list[tuple[int, int]]] = {}
            for u in self._units(cat, {r.checkpoint_id for r in refs}, f):
                spans.setdefault(cat.checkpoints[u.checkpoint_id].vocab_id, []).append((u.first_id, u.last_id))
            found = {vid: _merged(r) for vid, r in spans.items()}
            if len(cat.memo) > 4096:  # filters are few; a client sending endless new ones only clears this
                cat.memo.clear()
            cat.memo[key] = found
        return found

    def _hits(self, token: str | int, side: str, f: HitFilter) -> TokenHits[TokenHit]:
        cat = self._catalog()
        found = self._resolution(token, f.model, cat)
        matches = found.matches
        ranges = self._ranges(cat, f)
        out: TokenHits[TokenHit] = TokenHits([], TokenHit, matches=matches, missing=found.missing, token=token)
        display = {(m.vocab_id, m.token_id): m.display for m in matches}
        groups = [(ranges[vid], sorted({m.token_id for m in matches if m.vocab_id == vid}))
                  for vid in sorted({m.vocab_id for m in matches}) if ranges.get(vid)]
        if not groups:
            return out
        hits = out
        n = f.limit + f.offset
        held = postings.held(cat, self.path)  # after warm: the token's rows and the bounds from memory
        stored = held.hits(groups, side, n) if held is not None else self._rows(q.hits_in_ranges(groups, side, n, 0))
        rows, outcome = exact.certify(self.con, cat, self.path, groups, side, n, stored,
                                      held.bounds if held is not None else None)
        rows = rows[f.offset:]
        sources = self._source_names(cat, rows)
        for vector_id, sd, rank, token_id, score, z, src in rows:
            u = cat.unit_of(vector_id)
            ref = cat.checkpoints[u.checkpoint_id]
            hits.append(TokenHit.model_construct(
                model=ref.model, checkpoint=ref.label, component=u.component, layer=u.layer, head=u.head,
                index=u.first_index + vector_id - u.first_id, side=sd, rank=rank, token_id=token_id,
                token=display[(ref.vocab_id, token_id)], score=score, zscore=z, source_token_id=src,
                source_token=sources.get((ref.vocab_id, src)), expert=u.expert,
                dictionary=cat.dictionaries.get(u.dictionary_id) if u.dictionary_id is not None else None,
                exact=outcome.exact, exact_note=outcome.why))
        return hits

    def _direction(self, plus: list[str | int], minus: list[str | int], text: str | None, side: str,
                   f: HitFilter) -> TokenHits[TokenHit]:
        """The strongest vectors for a direction (``queries.exact``): every stored vector in scope scored."""
        if not plus and not text:
            raise LensdbError("give a token, several tokens, or a text to search for.")
        if plus and text:
            raise LensdbError("give tokens or a text, not both.")
        cat = self._catalog()
        terms = exact.direction_terms(plus, minus, text)
        weights: dict[int, dict[int, float]] = {}
        for term in terms:
            try:
                matches = self._resolve(term.word, f.model, cat)
            except UnknownToken:
                if text and term.weight > 0:  # a word of a text that a vocabulary lacks is left out of it
                    continue
                raise
            per_vocab: dict[int, list[int]] = {}
            for m in matches:
                per_vocab.setdefault(m.vocab_id, []).append(m.token_id)
            for vocab_id, ids in per_vocab.items():  # a word's several tokens share its weight
                w = weights.setdefault(vocab_id, {})
                for tid in ids:
                    w[tid] = w.get(tid, 0.0) + term.weight / len(ids)
        if not weights:
            raise UnknownToken(f"no word of {text!r} is a token of any indexed vocabulary.")
        refs = cat.chosen(f.model, f.checkpoint)
        if f.checkpoint not in (None, "all") and not refs:
            raise NotFound(f"no checkpoint {f.checkpoint!r}" + (f" in model {f.model!r}." if f.model
                                                                 else " in any model."))
        units = self._units(cat, {r.checkpoint_id for r in refs}, f)
        ranges = {vid: _merged([(u.first_id, u.last_id) for u in units
                                if cat.checkpoints[u.checkpoint_id].vocab_id == vid]) for vid in weights}
        every = sum(b - a + 1 for rs in ranges.values() for a, b in rs)
        found, outcome = exact.scan(self.con, cat, self.path, weights, ranges, side, f.limit + f.offset, every)
        if every and not outcome.scored:
            raise NotFound("the vectors searched have no stored vectors (indexed with --no-vectors or before schema "
                           "version 6): a contrast, set or text needs them; re-index with `lensdb index CHECKPOINT "
                           "--replace`.")
        shown = exact.label(plus, minus, text)
        hits: TokenHits[TokenHit] = TokenHits([], TokenHit, matches=[], missing=[], token=shown)
        for vector_id, score, z in found[f.offset:]:
            u = cat.unit_of(vector_id)
            ref = cat.checkpoints[u.checkpoint_id]
            hits.append(TokenHit.model_construct(
                model=ref.model, checkpoint=ref.label, component=u.component, layer=u.layer, head=u.head,
                index=u.first_index + vector_id - u.first_id, side=side, rank=None, token_id=None,  # type: ignore[arg-type]
                token=shown,
                score=score, zscore=z, source_token_id=None, source_token=None, expert=u.expert,
                dictionary=cat.dictionaries.get(u.dictionary_id) if u.dictionary_id is not None else None,
                exact=outcome.exact, exact_note=outcome.why))
        return hits

    def _search(self, token: "str | int | list[str | int] | None", side: str, filter: HitFilter | None,
                minus: "str | int | list[str | int] | None", text: str | None,
                fields: dict[str, Any]) -> TokenHits[TokenHit]:
        f = hit_filter(filter, fields)
        plus, less = token_list(token), token_list(minus)
        if len(plus) == 1 and not less and text is None:
            return self._hits(plus[0], side, f)
        return self._direction(plus, less, text, side, f)

    def _source_names(self, cat: Catalog, rows: list[tuple]) -> dict[tuple[int, int], str]:
        """Display text of the source tokens of head-map pairs among ``rows`` (vector_id first, source last)."""
        wanted: dict[int, set[int]] = {}
        for row in rows:
            if row[-1] is not None:
                vocab_id = cat.checkpoints[cat.unit_of(row[0]).checkpoint_id].vocab_id
                wanted.setdefault(vocab_id, set()).add(row[-1])
        return {(vid, tid): shown for vid, ids in wanted.items()
                for tid, shown in self._displays(cat, vid, sorted(ids)).items()}

    def promoters(self, token: "str | int | list[str | int] | None" = None, filter: HitFilter | None = None, *,
                  minus: "str | int | list[str | int] | None" = None, text: str | None = None,
                  **fields: Any) -> TokenHits[TokenHit]:
        """The vectors that promote ``token`` most, highest z-score first, across models: the true top n among
        every vector searched (``queries.exact``), each hit saying whether it is ``exact``.

        The token is resolved in each model's own vocabulary (``resolution``); the answer, a list with ``.df()``,
        also says per model which form matched (``.matches``) and which models have no such token
        (``.missing``). ``token`` may be a list (the mean direction of the tokens), ``minus`` a token or list
        whose mean is subtracted (``promoters("paris", minus="london")``), ``text`` a text whose words' mean
        direction is used. Narrow the search with a ``HitFilter`` or its fields as keywords (``model``,
        ``checkpoint``, ``component``, ``layer``, ``head``, ``expert``, ``role``, ``dictionary``, ``limit``,
        ``offset``); ``role`` defaults to the vectors that write into the stream (``"reads"``, ``"all"``; a named
        component wins); ``checkpoint=None`` searches each model's latest checkpoint, ``"all"`` every checkpoint.
        A filter that names nothing in the searched checkpoints is an ``InvalidFilter`` listing what exists.
        """
        return self._search(token, "top", filter, minus, text, fields)

    def suppressors(self, token: "str | int | list[str | int] | None" = None, filter: HitFilter | None = None, *,
                    minus: "str | int | list[str | int] | None" = None, text: str | None = None,
                    **fields: Any) -> TokenHits[TokenHit]:
        """The vectors that suppress ``token`` most, lowest z-score first (arguments as ``promoters``)."""
        return self._search(token, "bottom", filter, minus, text, fields)

    def vector(self, model: str, component: str, layer: int, index: int, head: int | None = None,
               checkpoint: str | None = None, expert: int | None = None, dictionary: str | None = None) -> VectorView:
        """One vector's statistics with its top and bottom tokens (latest checkpoint unless named); ``expert``
        names the expert of a mixture-of-experts vector, ``dictionary`` the dictionary of a latent."""
        cat = self._catalog()
        self._check_model(model, cat)
        refs = cat.chosen(model, checkpoint)
        vid = cat.vector_id(refs[0].checkpoint_id, component, layer, head, index, expert, dictionary) \
            if len(refs) == 1 else None
        found = self._rows(q.vector_by_id(vid) if vid is not None else
                           q.find_vector(model, component, layer, index, head, checkpoint, expert, dictionary))
        if not found:
            raise NotFound(self._missing_vector(model, component, layer, index, checkpoint, expert))
        if dictionary is None and len({r[13] for r in found}) > 1:
            names = ", ".join(sorted(str(r[13]) for r in found))
            raise NotFound(f"{model} {component} {layer} {index}: latents of several dictionaries sit there ({names}); "
                           "name one with dictionary (--dictionary).")
        vid, name, label, comp, lay, hd, idx, norm, mean, std, basis, vocab_id, exp, dict_name, row_label = found[0]
        top: list[TokenScore] = []
        bottom: list[TokenScore] = []
        lists = [r[1:5] for r in self._rows(q.vector_lists([vid]))]
        rows = rows_from_lists(lists[0], mean, std, self._displays(cat, vocab_id, [*lists[0][0], *lists[0][2]])) \
            if lists else self._rows(q.vector_tokens(vid, vocab_id))
        for side, rank, token_id, token, score, z, src, src_token in rows:
            (top if side == "top" else bottom).append(TokenScore(rank=rank, token_id=token_id, token=token, score=score,
                                                                 zscore=z, source_token_id=src, source_token=src_token))
        return VectorView(model=name, checkpoint=label, component=comp, layer=lay, head=hd, index=idx, norm=norm,
                          logit_mean=mean, logit_std=std, basis=basis, top=top, bottom=bottom, expert=exp,
                          dictionary=dict_name, label=row_label)

    def _displays(self, cat: Catalog, vocab_id: int, token_ids: list[int]) -> dict[int, str]:
        """Display text of tokens: from memory after ``warm``, else one lookup."""
        words = loaded_words(cat, self.path)
        if words is not None:
            return {t: words[vocab_id].display[t] for t in token_ids}
        return dict(self._rows(q.token_displays(vocab_id, sorted(set(token_ids)))))

    def _missing_vector(self, model: str, component: str, layer: int, index: int, checkpoint: str | None,
                        expert: int | None = None) -> str:
        comps = [r[0] for r in self._rows(q.model_components(model))]
        if component not in comps:
            return f"model {model!r} has no component {component!r}; indexed: {', '.join(comps)}."
        lo_l, hi_l, lo_i, hi_i, _, lo_e, hi_e = self._rows(q.vector_extent(model, component))[0]
        if (expert is None) != (lo_e is None) or (expert is not None and not lo_e <= expert <= hi_e):
            experts = "none (not an expert component)" if lo_e is None else f"{lo_e}–{hi_e}"
            return (f"no {component} vector {layer}.{index}"
                    f"{'' if expert is None else f' of expert {expert}'} in {model!r}: its experts are {experts}"
                    f"{'' if lo_e is None else '; pass the expert (--expert E)'}.")
        if checkpoint not in (None, "all"):
            labels = [c.label for m in self.models() if m.name == model for c in m.checkpoints]
            if checkpoint not in labels:
                return f"model {model!r} has no checkpoint {checkpoint!r}; indexed: {', '.join(labels)}."
        return (f"no {component} vector {layer}.{index} in {model!r}: layers run {lo_l}–{hi_l}, "
                f"indices {lo_i}–{hi_i}.")

    def head_map(self, token: str | int, kind: str = "ov", *, model: str | None = None,
                 checkpoint: str | None = None, limit: int = 20, per_head: int = 5) -> list[HeadRow]:
        """One row of every head's OV (``kind="ov"``: what the head writes when it attends to ``token``) or QK
        map (``"qk"``: which keys a query at ``token`` attends to), exact, across the heads of every model
        indexed with head maps; heads ranked by the z-score of their strongest target."""
        if kind not in ("ov", "qk"):
            raise LensdbError(f"kind must be 'ov' or 'qk', not {kind!r}.")
        cat = self._catalog()
        matches = self._resolve(token, model, cat)
        have = {r[0] for r in self._rows(q.head_map_checkpoints())}
        refs = [r for r in cat.chosen(model, checkpoint) if r.checkpoint_id in have]
        if not refs:
            raise NotFound("no checkpoint indexed with head maps" + (f" in model {model!r}" if model else "")
                           + "; index with `lensdb index CHECKPOINT --head-maps`.")
        out: list[HeadRow] = []
        for ref in refs:
            tables = head_rows.cached((store_key(self.path), ref.checkpoint_id, kind),
                                      functools.partial(self._head_tables, ref.checkpoint_id, kind))
            for m in (m for m in matches if m.model == ref.model):
                ids, best, z = head_rows.best_targets(tables, m.token_id, per_head)
                names = self._displays(cat, ref.vocab_id, sorted({int(i) for i in ids.reshape(-1)}))
                for row, (layer, head) in enumerate(tables.heads):
                    targets = [TokenScore(rank=j + 1, token_id=int(ids[row, j]), token=names[int(ids[row, j])],
                                          score=float(best[row, j]), zscore=float(z[row, j]))
                               for j in range(ids.shape[1])]
                    out.append(HeadRow(model=ref.model, checkpoint=ref.label, layer=layer, head=head, kind=kind,
                                       source_token_id=m.token_id, source_token=m.display,
                                       best_zscore=float(z[row, 0]), targets=targets))
        out.sort(key=lambda r: -r.best_zscore)
        return out[:limit]

    def _head_tables(self, checkpoint_id: int, kind: str) -> head_rows.HeadTables:
        stats = {(r[0], r[1]): (r[2], r[3]) for r in self._rows(q.head_map_stats(checkpoint_id, f"attn_{kind}_pair"))}
        bases = {role: tuple(self._rows(q.basis_data(checkpoint_id, role))[0]) for role in ("reads", "writes")}
        return head_rows.head_tables(self._rows(q.head_factor_rows(checkpoint_id, kind)), stats, bases, kind)

    def runs(self, limit: int = 50, offset: int = 0) -> tuple[list[RunInfo], int]:
        """Committed index runs, newest first, and how many there are."""
        cols = list(RunInfo.model_fields)
        items = [RunInfo(**dict(zip(cols, r, strict=True))) for r in self._rows(q.index_runs(limit, offset))]
        return items, int(self._rows(q.count_runs())[0][0])

    def component_counts(self, model: str) -> list[ComponentCount]:
        """Components of a model's latest checkpoint with how many layers, heads and vectors each has."""
        return [ComponentCount(component=r[0], layers=r[1], heads=r[2], vectors=r[3])
                for r in self._rows(q.component_counts(model))]

    def vectors(self, model: str, component: str | None = None, layer: int | None = None, head: int | None = None,
                checkpoint: str | None = None, order: str = "norm", limit: int = 50, offset: int = 0) -> VectorPage:
        """A page of a model's vectors (latest checkpoint unless named), largest norm first (``order="norm"``) or
        by component, layer, head and index (``"index"``), each with its first top tokens; ``.total`` counts them
        all. A component, layer or head the model does not have is an ``InvalidFilter`` naming what it has."""
        cat = self._catalog()
        self._check_model(model, cat)
        refs = cat.chosen(model, checkpoint)
        if not refs:
            raise NotFound(f"model {model!r} has no checkpoint {checkpoint!r}.")
        select_units(cat.units, {r.checkpoint_id for r in refs}, component, layer, head, role="all" if component
                     is None else None)
        rows = self._rows(q.list_vectors(model, component, layer, head, checkpoint, order, limit, offset))
        tops = self._top_tokens(cat, cat.models[model], [r[7] for r in rows], 3) if rows else {}
        items = [VectorInfo(checkpoint=r[0], component=r[1], layer=r[2], head=r[3], expert=r[4], index=r[5], norm=r[6],
                            top=[t.token for t in tops.get(r[7], [])]) for r in rows]
        return VectorPage(items=items, total=rows[0][8] if rows else 0)

    def models(self) -> list[ModelInfo]:
        """Every model with its checkpoints and how each was indexed."""
        out: dict[str, ModelInfo] = {}
        for r in self._rows(q.list_models()):
            info = out.get(r[0]) or ModelInfo(name=r[0], family=r[1], model_type=r[2], n_layers=r[3], d_model=r[4],
                                              d_ff=r[5], n_heads=r[6], vocab_size=r[7], checkpoints=[])
            out[r[0]] = info
            if r[8] is not None:
                info.checkpoints.append(CheckpointInfo(label=r[8], step=r[9], content_hash=r[10], path=r[11],
                                                       basis=r[12], top_k=r[13], n_vectors=r[14]))
        return list(out.values())

    def model(self, name: str) -> ModelDetail:
        """One model with its checkpoints and the components of its latest checkpoint."""
        found = [m for m in self.models() if m.name == name]
        if not found:
            known = ", ".join(m.name for m in self.models()) or "none yet"
            raise NotFound(f"no model {name!r}; indexed models: {known}.")
        return ModelDetail(**found[0].model_dump(), components=self.component_counts(name))

    # ---- training runs ---------------------------------------------------------------------------------

    def _steps(self, model: str) -> list[tuple]:
        rows = self._rows(q.model_steps(model))
        if not rows:
            known = sorted({*self._catalog().models, *(s.name for s in self.registered())}) or ["none yet"]
            raise NotFound(f"no indexed steps of model {model!r} in {self.path}; models: {', '.join(known)}.")
        return rows

    def steps(self, model: str) -> list[StepInfo]:
        """Every step of a model, oldest first: indexed, or linked to an identical indexed checkpoint."""
        return [StepInfo(checkpoint=r[0], step=r[1], linked_to=r[2]) for r in self._steps(model)]

    def _resolve_step(self, model: str, which: str | int) -> tuple:
        rows = self._steps(model)
        for r in rows:
            if r[0] == str(which):
                return r
        for r in rows:
            if r[1] is not None and str(r[1]) == str(which).removeprefix("step"):
                return r
        labels = ", ".join(r[0] if r[1] is None else f"{r[0]} (step {r[1]})" for r in rows)
        raise NotFound(f"model {model!r} has no checkpoint or step {which!r}; it has: {labels}.")

    def drift_vector(self, model: str, component: str, layer: int, index: int, head: int | None = None,
                     k: int = 10, expert: int | None = None, dictionary: str | None = None) -> list[VectorStep]:
        """One vector across training: its top ``k`` tokens at every step, and how much of its top-k set it
        shares with the previous step (``shared``, ``overlap`` = shared / k, ``jaccard``)."""
        self._steps(model)
        rows = self._rows(q.vector_drift(model, component, layer, index, head, expert, dictionary))
        if not rows:
            raise NotFound(self._missing_vector(model, component, layer, index, "all"))
        cat = self._catalog()
        tops = self._top_tokens(cat, cat.models[model], sorted({r[9] for r in rows}), k)
        return [VectorStep(checkpoint=r[0], step=r[1], linked_to=r[2], previous_checkpoint=r[3], norm=r[4],
                           norm_change=r[5], shared=r[6], overlap=r[7], jaccard=r[8], top=tops.get(r[9], []))
                for r in rows]

    def _top_tokens(self, cat: Catalog, vocab_id: int, vids: list[int], k: int) -> dict[int, list[TokenScore]]:
        """The first ``k`` top tokens of each vector, from ``vector_lists`` (point lookups; a vector without lists,
        a head map's pairs, has none)."""
        found = self._rows(q.vector_lists(vids))
        display = self._displays(cat, vocab_id, [t for f in found for t in f[1][:k]])
        tops: dict[int, list[TokenScore]] = {}
        for f in found:
            for _, rank, token_id, token, score, z, _, _ in rows_from_lists((f[1][:k], f[2][:k], [], []), f[5], f[6],
                                                                            display):
                tops.setdefault(f[0], []).append(TokenScore(rank=rank, token_id=token_id, token=token, score=score,
                                                            zscore=z))
        return tops

    def token_rank_over_training(self, model: str, token: str | int, component: str, layer: int, index: int,
                                 head: int | None = None, side: str = "top",
                                 expert: int | None = None) -> list[TokenRankStep]:
        """The rank of ``token`` among one vector's top (or bottom) tokens at every step; ``rank`` is None
        where the token is not in that step's top-k."""
        self._steps(model)
        matches = self.tokens(token, model=model)
        rows = self._rows(q.token_rank(model, component, layer, index, head, [m.token_id for m in matches], side,
                                       expert))
        if not rows:
            raise NotFound(self._missing_vector(model, component, layer, index, "all"))
        return [TokenRankStep(checkpoint=r[0], step=r[1], linked_to=r[2], rank=r[3], score=r[4], zscore=r[5],
                              top_k=r[6], token=r[7]) for r in rows]

    def changed_most(self, model: str, from_checkpoint: str | int, to_checkpoint: str | int,
                     component: str | None = None, limit: int = 20) -> list[ChangedVector]:
        """Vectors whose top-k tokens changed most between two checkpoints (labels or steps) of a model:
        lowest overlap first, ties broken by the largest change in norm."""
        a = self._resolve_step(model, from_checkpoint)
        b = self._resolve_step(model, to_checkpoint)
        if component is not None:
            comps = [r[0] for r in self._rows(q.model_components(model))]
            if comps and component not in comps:
                raise NotFound(f"model {model!r} has no component {component!r}; indexed: {', '.join(comps)}.")
        rows = self._rows(q.changed_most(a[3], b[3], a[4], b[4], b[5], component, limit))
        cols = list(ChangedVector.model_fields)
        return [ChangedVector(**dict(zip(cols, r, strict=True))) for r in rows]

    def registered(self) -> list[SourceInfo]:
        """Registered models: the folders `lensdb watch` re-scans, with how many steps are indexed and linked."""
        cols = list(SourceInfo.model_fields)
        return [SourceInfo(**dict(zip(cols, r, strict=True))) for r in self._rows(q.list_sources())]

    def watch_runs(self, limit: int = 20, offset: int = 0) -> list[WatchRunInfo]:
        """Watch cycles, newest first, each with what it did to every new checkpoint it found."""
        runs = self._rows(q.list_watch_runs(limit, offset))
        items: dict[int, list[WatchItemInfo]] = {}
        for r in self._rows(q.watch_items([r[0] for r in runs])):
            items.setdefault(r[0], []).append(WatchItemInfo(source=r[1], path=r[2], label=r[3], step=r[4],
                                                            action=r[5], reason=r[6]))
        cols = [c for c in WatchRunInfo.model_fields if c != "items"]
        return [WatchRunInfo(**dict(zip(cols, r, strict=True)), items=items.get(r[0], [])) for r in runs]

    # ---- forward passes --------------------------------------------------------------------------------

    def traces(self, limit: int = 50, offset: int = 0) -> list[TraceSummary]:
        """Stored traces, newest first."""
        return [TraceSummary(trace_id=r[0], model=r[1], checkpoint=r[2], prompt=r[3], position=r[4],
                             interventions=json.loads(r[5]), baseline_trace_id=r[6], created_at=r[7])
                for r in self._rows(q.list_traces(limit, offset))]

    def trace(self, trace_id: int, position: int | None = None) -> TraceView:
        """One stored trace at ``position`` (default: the position it was traced for)."""
        found = self._rows(q.trace_meta(trace_id))
        if not found:
            raise NotFound(f"no trace {trace_id} in {self.path}.")
        (tid, model, label, prompt, n_pos, pos, pred_id, pred_logit, readout, changes, boost, baseline, error,
         stream_error, vocab_id, _, _) = found[0]
        if position is not None:
            if not -n_pos <= position < n_pos:
                raise NotFound(f"trace {trace_id} has positions 0–{n_pos - 1}, not {position}.")
            pos = position % n_pos
        names = [r[2] for r in self._rows(q.vocabulary(vocab_id))]
        inputs = self._rows(q.trace_inputs(tid))
        pred_here = inputs[pos][2]
        tops: dict[tuple, list[TraceToken]] = {}
        for _, node, layer, unit, _, token_id, score in self._rows(q.trace_rows("trace_top_tokens", tid, pos)):
            tops.setdefault((node, layer, unit), []).append(TraceToken(token_id=token_id, token=names[token_id],
                                                                       score=score))
        attends: dict[tuple, list[tuple[int, str, float]]] = {}
        for _, layer, head, _, key, weight in self._rows(q.trace_rows("trace_attention", tid, pos)):
            attends.setdefault((layer, head), []).append((key, names[inputs[key][1]], weight))
        terms = [TraceTerm(kind=r[1], layer=r[2], head=r[3], norm=r[4], logit=r[5])
                 for r in self._rows(q.trace_rows("trace_terms", tid, pos))]
        head_logit = {(t.layer, t.head): t.logit for t in terms if t.kind == "head"}
        states = [TraceState(layer=r[1], norm=r[4], pred_rank=r[5], pred_logit=r[6],
                             top=tops.get(("state", r[1], None), []))
                  for r in self._rows(q.trace_rows("trace_states", tid, pos))]
        heads = [TraceHead(layer=r[1], head=r[2], norm=r[3], pred_rank=r[4],
                           logit=head_logit.get((r[1], r[2]), 0.0),
                           top=tops.get(("head", r[1], r[2]), []), attends=attends.get((r[1], r[2]), []))
                 for r in self._rows(q.trace_rows("trace_heads", tid, pos))]
        neurons = [TraceNeuron(layer=r[1], index=r[2], side=r[3], rank=r[4], activation=r[5], value_norm=r[6],
                               score=r[7], logit=r[8], pred_rank=r[9], vector_id=r[10],
                               top=tops.get(("neuron", r[1], r[2]), []))
                   for r in self._rows(q.trace_rows("trace_neurons", tid, pos))]
        return TraceView(trace_id=tid, model=model, checkpoint=label, prompt=prompt,
                         tokens=[names[r[1]] for r in inputs], predictions=[names[r[2]] for r in inputs],
                         position=pos, prediction=names[pred_here], prediction_id=pred_here,
                         prediction_logit=pred_logit if pos == found[0][5] else states[-1].pred_logit,
                         readout=readout, interventions=json.loads(changes), boost_value=boost,
                         baseline_trace_id=baseline, error=error, stream_error=stream_error, states=states,
                         heads=heads, neurons=neurons, terms=terms)

    # ---- across models ---------------------------------------------------------------------------------

    def alignments(self, limit: int = 50, offset: int = 0) -> list[AlignmentInfo]:
        """Alignment runs, newest first."""
        cols = list(AlignmentInfo.model_fields)
        return [AlignmentInfo(**dict(zip(cols, r, strict=True))) for r in self._rows(q.list_alignments(limit, offset))]

    def alignment(self, alignment_id: int, matches: bool = True, layer_a: int | None = None,
                  limit: int | None = None) -> Alignment:
        """One alignment run: layer-similarity matrix, raw baseline, matched layer pairs and unit matches
        (``matches=False`` leaves the unit list empty; ``layer_a`` / ``limit`` narrow it)."""
        found = self._rows(q.alignment_run(alignment_id))
        if not found:
            runs = [str(r.alignment_id) for r in self.alignments(limit=20)]
            raise NotFound(f"no alignment run {alignment_id} in {self.path}; runs: {', '.join(runs) or 'none yet'}.")
        info = AlignmentInfo(**dict(zip(AlignmentInfo.model_fields, found[0], strict=True)))
        cells = self._rows(q.alignment_layers(alignment_id))
        n_a, n_b = max(c[0] for c in cells) + 1, max(c[1] for c in cells) + 1
        sim = [[0.0] * n_b for _ in range(n_a)]
        raw: list[list[float]] | None = [[0.0] * n_b for _ in range(n_a)] if info.raw_comparable else None
        for la, lb, score, raw_score, _ in cells:
            sim[la][lb] = score
            if raw is not None:
                raw[la][lb] = raw_score
        pairs = [LayerPairRow(layer_a=la, layer_b=lb, score=sim[la][lb], raw_score=None if raw is None else raw[la][lb],
                              units=n, same_index=same, mean_unit_score=mean, raw_same_index=rsame if raw else None,
                              mean_raw_unit_score=rmean)
                 for la, lb, n, same, mean, rsame, rmean in self._rows(q.alignment_summary(alignment_id))]
        units = [UnitMatch(**dict(zip(UnitMatch.model_fields, r, strict=True)))
                 for r in self._rows(q.alignment_matches(alignment_id, layer_a, limit))] if matches else []
        return Alignment(info=info, similarity=sim, raw_similarity=raw, pairs=pairs, matches=units)

    def sql(self, statement: str, max_rows: int = 1000, timeout_s: float = 10.0,
            max_bytes: int = DEFAULT_MAX_BYTES, rss_budget_mb: int | None = DEFAULT_RSS_BUDGET_MB) -> SqlResult:
        """Run one read-only SELECT over the tables and views (see README, "SQL"): allow-listed functions only,
        at most ``max_rows`` rows and ``max_bytes`` bytes of JSON within ``timeout_s`` seconds."""
        return run_readonly(self.con, statement, max_rows=max_rows, timeout_s=timeout_s, max_bytes=max_bytes,
                            rss_budget_mb=rss_budget_mb)

    def check(self) -> "CheckReport":
        """Verify the store (``lensdb check``, ``queries.integrity``): problems found, and notes on attempts that
        did not commit."""
        from queries.integrity import check_store  # only `check` needs it

        return check_store(self.con)


def rows_from_lists(lists: tuple, mean: float, std: float, display: dict[int, str]) -> list[tuple]:
    """A vector's ``vector_lists`` row as the rows ``sql.vector_tokens`` returns, z-scores computed as the
    writer computed the stored ones: float32((score - logit_mean) / logit_std) in double precision, 1 for a zero
    std (``array('f')`` rounds to float32 exactly as the writer's numpy does)."""
    top_ids, top_scores, bottom_ids, bottom_scores = lists
    sd = std if std > 0 else 1.0
    out = []
    for side, ids, scores in (("top", top_ids, top_scores), ("bottom", bottom_ids, bottom_scores)):
        z = array("f", [(s - mean) / sd for s in array("f", scores)])
        out += [(side, rank, tid, display[tid], score, zz, None, None)
                for rank, (tid, score, zz) in enumerate(zip(ids, scores, z, strict=True), start=1)]
    return out


def hit_filter(given: HitFilter | None, fields: dict[str, Any]) -> HitFilter:
    """A ``HitFilter`` from an object, keyword fields, or both (fields override); a clear error for a field
    that does not exist or a value out of range."""
    try:
        return HitFilter(**{**(given.model_dump() if given else {}), **fields})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'filter'}: {e['msg']}" for e in err.errors())
        raise LensdbError(f"bad search filter ({problems}); filters are {', '.join(HitFilter.model_fields)}.") from None


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent id ranges joined into one (a whole checkpoint is usually a single range)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def connect(where: str | Path, *, limits: Limits | None = None, token: str | None = None) -> "Lens":
    """Open a store read-only: a file (``lens.duckdb``), or a running ``lensdb serve`` by its URL
    (``http://127.0.0.1:8000``; ``token``: its access token, default ``LENSDB_TOKEN``), which answers the same
    methods with the same rows and errors (``queries.remote.RemoteLens``). Fails clearly if the file is missing or
    another process is writing it. Connecting again, from any thread, is fine; ``limits`` bound what its queries
    may take (``queries.readonly``)."""
    if isinstance(where, str) and where.startswith(("http://", "https://")):
        from queries.remote import RemoteLens

        return RemoteLens(where, token=token)  # type: ignore[return-value]
    con, release, snapshot = open_hardened(where, limits)
    return Lens(con, Path(where), release, snapshot)
