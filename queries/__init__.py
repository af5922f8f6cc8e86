"""The Python API over a lensdb store: ``queries.connect(path)`` returns a read-only ``Lens``."""

from queries.api import Lens, NotFound, UnknownToken, connect
from queries.readonly import SqlRefused, SqlTimeout
from queries.rows import ModelInfo, SqlResult, TokenHit, TokenMatch, TokenScore, VectorView

__all__ = ["Lens", "ModelInfo", "NotFound", "SqlRefused", "SqlResult", "SqlTimeout", "TokenHit", "TokenMatch",
           "TokenScore", "UnknownToken", "VectorView", "connect"]
