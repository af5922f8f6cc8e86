"""The Python API: typed questions in, pydantic rows out. All SQL comes from ``queries.sql``."""

from pathlib import Path

import duckdb

from queries import sql as q
from queries.readonly import open_hardened, run_readonly
from queries.rows import CheckpointInfo, ModelInfo, SqlResult, TokenHit, TokenMatch, TokenScore, VectorView
from schema.errors import LensdbError


class UnknownToken(LensdbError):
    """The word or id is in no indexed vocabulary."""


class NotFound(LensdbError):
    """The model, checkpoint or vector asked for is not in the store."""


class Lens:
    """A read-only view of one store. Create with ``queries.connect(path)``."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        self.con = con
        self.path = path

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Lens":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, built: q.Sql) -> list[tuple]:
        sql, params = built
        return self.con.execute(sql, params).fetchall()

    def _model_names(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT name FROM models ORDER BY name").fetchall()]

    def _check_model(self, model: str | None) -> None:
        if model is not None and model not in self._model_names():
            known = ", ".join(self._model_names()) or "none yet"
            raise NotFound(f"no model {model!r} in {self.path}; indexed models: {known}.")

    def tokens(self, token: str | int, model: str | None = None) -> list[TokenMatch]:
        """How ``token`` (a word, a raw token spelling, or an int id) resolves in each model's vocabulary.

        A word matches case-sensitively where it can (``paris`` finds ``Ġparis``, ``paris`` and ``##paris``)
        and falls back to case-insensitive matching only when nothing matches exactly.
        """
        self._check_model(model)
        if isinstance(token, int):
            rows = self._rows(q.token_by_id(token))
        else:
            rows = self._rows(q.resolve_token(token, ignore_case=False)) or self._rows(
                q.resolve_token(token, ignore_case=True)
            )
        rows = [r for r in rows if model is None or r[0] == model]
        if not rows:
            where = f"model {model!r}" if model else "any indexed vocabulary"
            hint = ""
            if isinstance(token, str):
                near = [r[0] for r in self._rows(q.similar_words(token))]
                hint = f" Similar tokens: {', '.join(near)}." if near else ""
            raise UnknownToken(f"token {token!r} is not in {where}.{hint}")
        self._matches = rows
        return [TokenMatch(model=r[0], token_id=r[2], token=r[3], display=r[4]) for r in rows]

    def _hits(self, token: str | int, side: str, model: str | None, checkpoint: str | None,
              component: str | None, layer: int | None, head: int | None, limit: int, offset: int) -> list[TokenHit]:
        self.tokens(token, model)
        pairs = sorted({(r[1], r[2]) for r in self._matches})
        built = q.token_hits(pairs, side, model=model, checkpoint=checkpoint, component=component, layer=layer,
                             head=head, limit=limit, offset=offset)
        cols = list(TokenHit.model_fields)
        return [TokenHit(**dict(zip(cols, r, strict=True))) for r in self._rows(built)]

    def promoters(self, token: str | int, *, model: str | None = None, checkpoint: str | None = None,
                  component: str | None = None, layer: int | None = None, head: int | None = None,
                  limit: int = 20, offset: int = 0) -> list[TokenHit]:
        """Vectors that have ``token`` among their top tokens, highest z-score first, across models.

        ``checkpoint=None`` searches each model's latest checkpoint, ``"all"`` every checkpoint.
        """
        return self._hits(token, "top", model, checkpoint, component, layer, head, limit, offset)

    def suppressors(self, token: str | int, *, model: str | None = None, checkpoint: str | None = None,
                    component: str | None = None, layer: int | None = None, head: int | None = None,
                    limit: int = 20, offset: int = 0) -> list[TokenHit]:
        """Vectors that have ``token`` among their bottom tokens, lowest z-score first."""
        return self._hits(token, "bottom", model, checkpoint, component, layer, head, limit, offset)

    def vector(self, model: str, component: str, layer: int, index: int, head: int | None = None,
               checkpoint: str | None = None) -> VectorView:
        """One vector's statistics with its top and bottom tokens (latest checkpoint unless named)."""
        self._check_model(model)
        found = self._rows(q.find_vector(model, component, layer, index, head, checkpoint))
        if not found:
            raise NotFound(self._missing_vector(model, component, layer, index, checkpoint))
        vid, name, label, comp, lay, hd, idx, norm, mean, std, basis, vocab_id = found[0]
        top: list[TokenScore] = []
        bottom: list[TokenScore] = []
        for side, rank, token_id, token, score, z in self._rows(q.vector_tokens(vid, vocab_id)):
            (top if side == "top" else bottom).append(
                TokenScore(rank=rank, token_id=token_id, token=token, score=score, zscore=z))
        return VectorView(model=name, checkpoint=label, component=comp, layer=lay, head=hd, index=idx, norm=norm,
                          logit_mean=mean, logit_std=std, basis=basis, top=top, bottom=bottom)

    def _missing_vector(self, model: str, component: str, layer: int, index: int, checkpoint: str | None) -> str:
        comps = [r[0] for r in self._rows(q.model_components(model))]
        if component not in comps:
            return f"model {model!r} has no component {component!r}; indexed: {', '.join(comps)}."
        lo_l, hi_l, lo_i, hi_i, _ = self._rows(q.vector_extent(model, component))[0]
        if checkpoint not in (None, "all"):
            labels = [c.label for m in self.models() if m.name == model for c in m.checkpoints]
            if checkpoint not in labels:
                return f"model {model!r} has no checkpoint {checkpoint!r}; indexed: {', '.join(labels)}."
        return (f"no {component} vector {layer}.{index} in {model!r}: layers run {lo_l}–{hi_l}, "
                f"indices {lo_i}–{hi_i}.")

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

    def sql(self, statement: str, max_rows: int = 1000, timeout_s: float = 10.0) -> SqlResult:
        """Run one read-only SELECT over the tables and views (see README, "SQL")."""
        return run_readonly(self.con, statement, max_rows=max_rows, timeout_s=timeout_s)


def connect(path: str | Path) -> Lens:
    """Open a store read-only. Fails clearly if it is missing or another process is writing it."""
    return Lens(open_hardened(path), Path(path))
