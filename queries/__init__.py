"""The Python API over a lensdb store: ``queries.connect(path)`` returns a read-only ``Lens``."""

from queries.api import Lens, NotFound, UnknownToken, connect
from queries.readonly import SqlRefused, SqlTimeout
from queries.rows import (
    Alignment,
    AlignmentInfo,
    ChangedVector,
    ModelInfo,
    SourceInfo,
    SqlResult,
    StepInfo,
    TokenHit,
    TokenMatch,
    TokenRankStep,
    TokenScore,
    UnitMatch,
    VectorStep,
    VectorView,
    WatchRunInfo,
)

__all__ = ["Alignment", "AlignmentInfo", "ChangedVector", "Lens", "ModelInfo", "NotFound", "SourceInfo",
           "SqlRefused", "SqlResult", "SqlTimeout", "StepInfo", "TokenHit", "TokenMatch", "TokenRankStep",
           "TokenScore", "UnitMatch", "UnknownToken", "VectorStep", "VectorView", "WatchRunInfo", "connect"]
