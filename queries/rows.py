"""Typed rows the query layer returns (and the CLI and service serialise)."""

from typing import Literal

from pydantic import BaseModel

Side = Literal["top", "bottom"]


class TokenHit(BaseModel):
    """One vector that has the asked-for token among its top (or bottom) tokens."""

    model: str
    checkpoint: str
    component: str
    layer: int
    head: int | None
    index: int
    side: Side
    rank: int
    token_id: int
    token: str
    score: float
    zscore: float


class TokenScore(BaseModel):
    rank: int
    token_id: int
    token: str
    score: float
    zscore: float


class VectorView(BaseModel):
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


class CheckpointInfo(BaseModel):
    label: str
    step: int | None
    content_hash: str
    path: str
    basis: str
    top_k: int
    n_vectors: int


class ModelInfo(BaseModel):
    name: str
    family: str
    model_type: str
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    vocab_size: int
    checkpoints: list[CheckpointInfo]


class TokenMatch(BaseModel):
    """How a typed word resolved in one model's vocabulary."""

    model: str
    token_id: int
    token: str
    display: str


class SqlResult(BaseModel):
    columns: list[str]
    rows: list[list]
    truncated: bool
