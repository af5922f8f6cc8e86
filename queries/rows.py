"""Typed rows the query layer returns (and the CLI and service serialise)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from queries.frames import Frames, table_arrow, table_html


class Row(BaseModel):
    """A row the read side answers with. Its validator is built when the first one is made, not at import:
    ``import queries`` then costs a few milliseconds instead of one schema build per class (~100 ms). The token
    lookup, the hot path, builds its rows with ``model_construct``: their values come typed from the store."""

    model_config = ConfigDict(defer_build=True)

Side = Literal["top", "bottom"]


class TokenHit(Row):
    """One vector among the strongest for the asked-for token (or direction), on one side."""

    model: str
    checkpoint: str
    component: str
    layer: int
    head: int | None
    index: int
    side: Side
    rank: int | None  # the token's rank in the vector's stored list; None: beyond it (scored exactly) or a direction
    token_id: int | None  # None for a direction (contrast, set, text)
    token: str
    score: float
    zscore: float
    source_token_id: int | None = None
    source_token: str | None = None
    expert: int | None = None
    dictionary: str | None = None  # the dictionary of a latent (sae_dec, sae_enc, dir_write, dir_read)
    exact: bool | None = None  # whether the answer is the true top n by z-score among every vector searched
    exact_note: str | None = None  # why it is not, where it is not


class TokenScore(Row):
    rank: int
    token_id: int
    token: str
    score: float
    zscore: float
    source_token_id: int | None = None
    source_token: str | None = None


class HeadRow(Row):
    """One head's row of its OV or QK map for one source token: the head's strongest targets."""

    model: str
    checkpoint: str
    layer: int
    head: int
    kind: str
    source_token_id: int
    source_token: str
    best_zscore: float
    targets: list[TokenScore]


class VectorView(Row):
    """One vector: where it lives, its statistics, and what it promotes and suppresses."""

    model: str
    checkpoint: str
    component: str
    layer: int
    head: int | None
    index: int
    norm: float
    logit_mean: float
    logit_std: float
    basis: str
    top: list[TokenScore]
    bottom: list[TokenScore]
    expert: int | None = None
    dictionary: str | None = None  # the dictionary of a latent
    label: str | None = None  # a direction-set row's label, where the set gives one

    def arrow(self) -> Any:
        """Its top and bottom tokens as one pyarrow Table (a ``side`` column first); ``.df()``, ``.pl()`` alike."""
        return table_arrow(*self._token_table())

    def df(self) -> Any:
        """Its top and bottom tokens as a pandas DataFrame."""
        return Frames.df(self)  # type: ignore[arg-type]

    def pl(self) -> Any:
        """Its top and bottom tokens as a polars DataFrame."""
        return Frames.pl(self)  # type: ignore[arg-type]

    def _token_table(self) -> tuple[list[str], list[list]]:
        cols = ["side", *TokenScore.model_fields]
        return cols, [[side, *t.model_dump().values()] for side, ts in (("top", self.top), ("bottom", self.bottom))
                      for t in ts]

    def _repr_html_(self) -> str:
        where = f" head {self.head}" if self.head is not None else ""
        where += f" expert {self.expert}" if self.expert is not None else ""
        title = (f"{self.model}/{self.checkpoint} {self.component} layer {self.layer}{where} #{self.index} — "
                 f"norm {self.norm:.4g}, basis {self.basis}")
        n = max(len(self.top), len(self.bottom))
        rows = [[i + 1, *((t.token, t.zscore) if (t := _at(self.top, i)) else ("", None)),
                 *((b.token, b.zscore) if (b := _at(self.bottom, i)) else ("", None))] for i in range(n)]
        return table_html(["rank", "top", "z", "bottom", "z"], rows, caption=title)


def _at(items: list, i: int) -> Any:
    return items[i] if i < len(items) else None


class VectorInfo(Row):
    """One vector in a model's listing (``Lens.vectors``): where it sits, its norm and its first top tokens."""

    checkpoint: str
    component: str
    layer: int
    head: int | None
    expert: int | None
    index: int
    norm: float
    top: list[str] = Field(description="its first top tokens (none for a head map's pairs)")


class VectorPage(Row):
    """A page of ``Lens.vectors`` with the size of the whole listing."""

    items: list[VectorInfo]
    total: int

    def arrow(self) -> Any:
        """This page's vectors as a pyarrow Table (``.df()``: pandas, ``.pl()``: polars)."""
        from queries.frames import Rows

        return Rows(self.items, VectorInfo).arrow()

    def df(self) -> Any:
        return Frames.df(self)  # type: ignore[arg-type]

    def pl(self) -> Any:
        return Frames.pl(self)  # type: ignore[arg-type]

    def _repr_html_(self) -> str:
        from queries.frames import Rows

        return Rows(self.items, VectorInfo)._repr_html_() + f"<p>{len(self.items)} of {self.total} vectors</p>"


class CheckpointInfo(Row):
    label: str
    step: int | None
    content_hash: str
    path: str
    basis: str
    top_k: int
    n_vectors: int


class ModelInfo(Row):
    name: str
    family: str
    model_type: str
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    vocab_size: int
    checkpoints: list[CheckpointInfo]


class TokenMatch(Row):
    """How a typed word resolved in one model's vocabulary."""

    model: str
    vocab_id: int
    token_id: int
    token: str
    display: str
    form: str = Field("exact", description="how the typed text matched in this model's vocabulary: exact, "
                      "any-case, word (without space or a Ġ/▁/## marker, any case) or id")


class WarmInfo(Row):
    """What ``Lens.warm`` brought into memory."""

    vocabularies: int = Field(description="vocabularies in the store")
    loaded_vocabularies: int = Field(description="vocabularies loaded by this call (the others were held)")
    rows: int = Field(description="token rows read (held as postings, or into DuckDB's buffer pool)")
    postings_mb: float = Field(0.0, description="token rows and vector bounds held in memory for lookups "
                               "(queries.postings); 0 where they do not fit the value cache's budget")
    values_mb: float = Field(0.0, description="stored vectors and the basis rows that read them, held in memory "
                             "for exact answers (queries.exact)")
    seconds: float


class SqlResult(Row):
    columns: list[str]
    rows: list[list] = Field(description="values as JSON carries them: dates as ISO text, blobs as \\x-prefixed hex")
    truncated: bool
    truncated_by: Literal["rows", "bytes"] | None = Field(None, description="which cap cut the answer, if one did")

    def _columns(self) -> list[str]:
        return self.columns

    def _records(self) -> list:
        return self.rows

    def arrow(self) -> Any:
        """The rows as a pyarrow Table (``.df()``: pandas, ``.pl()``: polars), values as the JSON answer has them."""
        return table_arrow(self.columns, self.rows)

    def df(self) -> Any:
        """A pandas DataFrame of the rows (pandas: the optional extra ``lensdb[frames]``)."""
        return Frames.df(self)  # type: ignore[arg-type]

    def pl(self) -> Any:
        """A polars DataFrame of the rows."""
        return Frames.pl(self)  # type: ignore[arg-type]

    def _repr_html_(self) -> str:
        note = f"<p>truncated by {self.truncated_by}</p>" if self.truncated else ""
        return table_html(self.columns, self.rows) + note


class StepInfo(Row):
    """One step of a model: indexed itself, or linked to an identical indexed checkpoint."""

    checkpoint: str
    step: int | None
    linked_to: str | None


class VectorStep(Row):
    """One vector at one step, compared with the same vector at the previous step."""

    checkpoint: str
    step: int | None
    linked_to: str | None
    previous_checkpoint: str | None
    norm: float
    norm_change: float | None
    shared: int | None = None
    overlap: float | None = None
    jaccard: float | None = None
    top: list[TokenScore]


class TokenRankStep(Row):
    """Where a token ranks among one vector's top (or bottom) tokens at one step; None: not in the top-k."""

    checkpoint: str
    step: int | None
    linked_to: str | None
    rank: int | None
    score: float | None
    zscore: float | None
    top_k: int
    token: str | None = None


class ChangedVector(Row):
    """A vector compared between two checkpoints: top-k overlap (low = changed) and norm change."""

    component: str
    layer: int
    head: int | None
    index: int
    shared: int
    overlap: float
    jaccard: float
    norm_from: float
    norm_to: float
    norm_change: float
    top_from: str | None
    top_to: str | None
    expert: int | None = None


class SourceInfo(Row):
    """A registered model: the folder watched and how its checkpoints are indexed."""

    name: str
    path: str
    kind: str
    top_k: int
    basis: str
    registered_at: datetime
    indexed: int
    linked: int


class WatchItemInfo(Row):
    source: str
    path: str
    label: str
    step: int | None
    action: str
    reason: str | None


class WatchRunInfo(Row):
    watch_id: int
    started_at: datetime
    finished_at: datetime | None
    status: str
    error: str | None
    n_indexed: int
    n_linked: int
    n_skipped: int
    n_failed: int
    n_known: int
    items: list[WatchItemInfo]


class TraceToken(Row):
    token_id: int
    token: str
    score: float


class TraceState(Row):
    """The residual stream at one layer (0 = after the embedding) through the logit lens."""

    layer: int
    norm: float
    pred_rank: int
    pred_logit: float
    top: list[TraceToken]


class TraceHead(Row):
    layer: int
    head: int
    norm: float
    pred_rank: int
    logit: float
    top: list[TraceToken]
    attends: list[tuple[int, str, float]]


class TraceNeuron(Row):
    layer: int
    index: int
    side: Side
    rank: int
    activation: float
    value_norm: float
    score: float
    logit: float
    pred_rank: int
    vector_id: int | None
    top: list[TraceToken]


class TraceTerm(Row):
    kind: str
    layer: int | None
    head: int | None
    norm: float
    logit: float


NO_LM_HEAD = "readout: none — the checkpoint has no LM head; showing h·Eᵀ"
"""What a trace of an encoder without a masked-LM head says instead of presenting a prediction."""


class TraceView(Row):
    """One trace at one position: the logit lens per layer, heads, neurons and the decomposition. ``readout``:
    ``lm_head``, ``mlm_head`` (an encoder's own masked-LM head), or ``none`` (no LM head: ``prediction`` is then
    only the top token of h·Eᵀ, see ``NO_LM_HEAD``; traces stored before schema version 3 say ``tied_embedding``
    for that)."""

    trace_id: int
    model: str
    checkpoint: str
    prompt: str
    tokens: list[str]
    predictions: list[str]
    position: int
    prediction: str
    prediction_id: int
    prediction_logit: float
    readout: str
    interventions: list[str]
    boost_value: float
    baseline_trace_id: int | None
    error: float
    stream_error: float
    states: list[TraceState]
    heads: list[TraceHead]
    neurons: list[TraceNeuron]
    terms: list[TraceTerm]


class TraceSummary(Row):
    trace_id: int
    model: str
    checkpoint: str
    prompt: str
    position: int
    interventions: list[str]
    baseline_trace_id: int | None
    created_at: datetime

class AlignmentInfo(Row):
    """One alignment run: model A's checkpoint against model B's, on one component."""

    alignment_id: int
    model_a: str
    checkpoint_a: str
    model_b: str
    checkpoint_b: str
    component: str
    unit: str
    basis: str
    statistic: str  # best, paper, or best_signed (runs before schema version 3)
    vocab_size: int
    raw_comparable: bool
    mean_matched: float
    seconds: float
    created_at: datetime
    dictionary_a: str | None = None  # unit latent: the two dictionaries compared (schema version 6)
    dictionary_b: str | None = None


class LayerPair(Row):
    """A Hungarian-matched layer pair with how its units matched."""

    layer_a: int
    layer_b: int
    score: float
    raw_score: float | None
    units: int
    same_index: int
    mean_unit_score: float
    raw_same_index: int | None
    mean_raw_unit_score: float | None


class UnitMatch(Row):
    layer_a: int
    index_a: int
    layer_b: int
    index_b: int
    score: float
    raw_index_b: int | None
    raw_score: float | None


class Alignment(Row):
    """An alignment run with its layer-similarity matrix (rows: A's layers), raw baseline and matched pairs."""

    info: AlignmentInfo
    similarity: list[list[float]]
    raw_similarity: list[list[float]] | None
    pairs: list[LayerPair]
    matches: list[UnitMatch]


class RunInfo(Row):
    """One committed index run (only complete runs are ever committed)."""

    run_id: int
    model: str
    checkpoint: str
    status: str
    started_at: datetime
    finished_at: datetime
    basis: str
    top_k: int
    n_vectors: int
    n_projections: int
    seconds: float


class ComponentCount(Row):
    component: str
    layers: int
    heads: int
    vectors: int


class ModelDetail(ModelInfo):
    """A model with its checkpoints and what its latest checkpoint holds per component."""

    components: list[ComponentCount]
