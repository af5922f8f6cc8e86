"""The Python API over a lensdb store: ``queries.connect(path)`` returns a read-only ``Lens``."""

from queries.api import Lens, NotFound, UnknownToken, connect
from queries.readonly import SqlRefused, SqlTimeout
from queries.rows import (
    Alignment,
    AlignmentInfo,
    ChangedVector,
    HeadRow,
    ModelInfo,
    SourceInfo,
    SqlResult,
    StepInfo,
    TokenHit,
    TokenMatch,
    TokenRankStep,
    TokenScore,
    TraceSummary,
    TraceView,
    UnitMatch,
    VectorStep,
    VectorView,
    WatchRunInfo,
)

__all__ = ["Alignment", "AlignmentInfo", "ChangedVector", "HeadRow", "Lens", "ModelInfo", "NotFound", "SourceInfo",
           "SqlRefused", "SqlResult", "SqlTimeout", "StepInfo", "TokenHit", "TokenMatch", "TokenRankStep",
           "TokenScore", "TraceSummary", "TraceView", "UnitMatch", "UnknownToken", "VectorStep", "VectorView",
           "WatchRunInfo", "connect"]
