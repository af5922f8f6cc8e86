"""What a question is asked of: which checkpoints ("latest", "all" or a label) and which vectors, and the
page of hits wanted. One definition, used alike by the Python API, the command line and HTTP."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

LATEST_HELP = "a checkpoint label, or 'all'; default: each model's latest"


def chooses(checkpoint: str | None, label: str, latest: bool) -> bool:
    """Whether a checkpoint choice picks the checkpoint with ``label``: None takes each model's latest
    (highest step, then most recently indexed: the ``latest_checkpoints`` view), ``"all"`` every one, any
    other text the checkpoint with that label. The SQL form is ``queries.sql.checkpoint_filter``."""
    if checkpoint is None:
        return latest
    return checkpoint == "all" or label == checkpoint


def token_list(given: "str | int | list[str | int] | tuple[str | int, ...] | None") -> list[str | int]:
    """A search argument's tokens: none, one, or the list a direction averages (``promoters(["paris",
    "berlin"])``, ``minus="london"``)."""
    return [] if given is None else list(given) if isinstance(given, list | tuple) else [given]


class HitFilter(BaseModel):
    """Which vectors a token search looks at, and which page of its hits to return."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    model: str | None = Field(None, description="only this model")
    checkpoint: str | None = Field(None, description=LATEST_HELP)
    component: str | None = Field(None, description="only this component, e.g. ff_value")
    layer: int | None = Field(None, description="only this layer")
    head: int | None = Field(None, description="only this attention head")
    expert: int | None = Field(None, description="only this mixture-of-experts expert")
    role: Literal["writes", "reads", "all"] | None = Field(
        None, description="writes (default: vectors that write into the stream, the ones that can promote a token), "
        "reads, or all; a named component wins over the default; head-map pairs only by component (attn_ov_pair)")
    dictionary: str | None = Field(None, description="only the latents of this dictionary (SAE, transcoder or "
                                   "direction set)")
    limit: int = Field(20, ge=1, le=1_000_000, description="hits to return")
    offset: int = Field(0, ge=0, le=2**31 - 1, description="hits to skip, for paging")
