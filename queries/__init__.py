"""The read side: ``queries.connect(path)`` returns a read-only ``Lens``; every question is a method that
builds its SQL as values (``queries.sql``) and answers with pydantic rows (``queries.rows``).
``queries.connect("http://…")`` returns the same interface answered by a running service (``remote``).

Owns: the Python API (``lens``), the same API over HTTP (``remote``, standard library only), SQL builders
(``sql``), the in-memory catalog (``catalog``), search filters (``filters``), head-map rows at query time
(``head_rows``), read-only user SQL and the bounded, locked-down instance it runs in (``readonly``), store checks
(``integrity``) and the Parquet export (``export``).

May import: duckdb, pydantic, ``schema.errors``, ``schema.connect`` and ``schema.layout``; numpy only inside
the functions that compute (a head-map row). Never torch, SQLAlchemy or ``indexer``: a lookup costs about what
DuckDB costs (tests/test_layout.py checks the module set).
"""

from queries.filters import HitFilter
from queries.lens import Lens, connect
from queries.readonly import SqlRefused, SqlTimeout
from queries.rows import (
    Alignment,
    AlignmentInfo,
    ChangedVector,
    HeadRow,
    ModelDetail,
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
from schema.errors import NotFound, UnknownToken

__all__ = ["Alignment", "AlignmentInfo", "ChangedVector", "HeadRow", "HitFilter", "Lens", "ModelDetail", "ModelInfo",
           "NotFound", "SourceInfo", "SqlRefused", "SqlResult", "SqlTimeout", "StepInfo", "TokenHit", "TokenMatch",
           "TokenRankStep", "TokenScore", "TraceSummary", "TraceView", "UnitMatch", "UnknownToken", "VectorStep",
           "VectorView", "WatchRunInfo", "connect"]
