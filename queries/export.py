"""Export the store as Hive-partitioned Parquet that DuckDB, Spark or Trino read from object storage.

Layout under the target folder:
- ``projections/model=…/checkpoint=…/component=…/*.parquet`` — the ``projections`` view, each file sorted by
  token_id so readers skip row groups by min/max the same way the store does;
- ``vectors/model=…/checkpoint=…/component=…/*.parquet`` — the ``vector_info`` view;
- ``models.parquet``, ``checkpoints.parquet``, ``index_runs.parquet``, ``tokens.parquet`` — the small tables.

The export runs on a read-only connection of its own: it must write files, which the hardened user-SQL
connection forbids.
"""

from pathlib import Path

from pydantic import BaseModel

from schema.connect import open_reader
from schema.errors import LensdbError

PARTITIONED = {
    "projections": "SELECT * EXCLUDE (vector_id, checkpoint_id, model_id) FROM projections ORDER BY token_id",
    "vectors": "SELECT * EXCLUDE (vector_id, checkpoint_id, model_id) FROM vector_info",
}
PLAIN = {
    "models": "SELECT * FROM model_summary",
    "checkpoints": "SELECT m.name AS model, c.* EXCLUDE (model_id) FROM checkpoints c JOIN models m USING (model_id)",
    "index_runs": "SELECT * FROM index_runs",
    "tokens": "SELECT m.name AS model, t.token_id, t.token, t.display, t.word "
              "FROM tokens t JOIN models m USING (vocab_id)",
}


class ExportResult(BaseModel):
    folder: str
    rows: dict[str, int]
    files: int


def _lit(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def export_parquet(db_path: str | Path, folder: str | Path, overwrite: bool = False) -> ExportResult:
    """Write the whole store under ``folder``; refuses a non-empty folder unless ``overwrite``."""
    out = Path(folder)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise LensdbError(f"{out} is not empty; choose an empty folder or pass --overwrite.")
    out.mkdir(parents=True, exist_ok=True)
    con = open_reader(db_path)
    rows: dict[str, int] = {}
    try:
        for name, select in PARTITIONED.items():
            (rows[name],) = con.execute(f"SELECT count(*) FROM ({select})").fetchone()  # type: ignore[misc]
            con.execute(f"COPY ({select}) TO {_lit(out / name)} (FORMAT parquet, "
                        "PARTITION_BY (model, checkpoint, component), OVERWRITE_OR_IGNORE true)")
        for name, select in PLAIN.items():
            (rows[name],) = con.execute(f"SELECT count(*) FROM ({select})").fetchone()  # type: ignore[misc]
            con.execute(f"COPY ({select}) TO {_lit(out / (name + '.parquet'))} (FORMAT parquet)")
    finally:
        con.close()
    return ExportResult(folder=str(out), rows=rows, files=sum(1 for _ in out.rglob("*.parquet")))
