"""The few reads only the service needs, as ``(sql, params)`` values over the documented views and tables."""

from datetime import datetime

from pydantic import BaseModel

from queries.sql import Sql


class RunInfo(BaseModel):
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


class ComponentCount(BaseModel):
    component: str
    layers: int
    heads: int
    vectors: int


def index_runs(limit: int, offset: int) -> Sql:
    return (
        """SELECT r.run_id, m.name, c.label, r.status, r.started_at, r.finished_at, r.basis, r.top_k,
       r.n_vectors, r.n_projections, r.seconds
FROM index_runs r JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id)
ORDER BY r.run_id DESC LIMIT ? OFFSET ?""",
        [limit, offset],
    )


def count_runs() -> Sql:
    return "SELECT count(*) FROM index_runs", []


def component_counts(model: str) -> Sql:
    """Components of a model's latest checkpoint with how many layers, heads and vectors each has."""
    return (
        """SELECT component, count(DISTINCT layer), count(DISTINCT head), count(*) FROM vector_info
WHERE model = ? AND checkpoint_id IN (SELECT checkpoint_id FROM latest_checkpoints)
GROUP BY component ORDER BY component""",
        [model],
    )
