"""`lensdb export --parquet`: the same question gets the same answer from the Parquet export."""

from pathlib import Path

import duckdb
import pytest

import queries
from service.cli import main


def test_export_answers_promoters_like_the_store(store_copy: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export"
    assert main(["export", "--parquet", str(out), "--db", str(store_copy)]) == 0
    assert "Parquet files under" in capsys.readouterr().out
    root = out / "projections"
    parts = sorted(p.relative_to(root).parent.as_posix() for p in root.rglob("*.parquet"))
    assert "model=gpt2-tiny/checkpoint=tiny-gpt2/component=ff_value" in parts

    with queries.connect(store_copy) as db:
        expected = [(h.model, h.component, h.layer, h.index, h.rank, h.zscore)
                    for h in db.promoters("paris", role="all", limit=10)]  # the export holds every role
    con = duckdb.connect()
    got = con.execute(f"""
        SELECT model, component, layer, "index", rank, zscore::DOUBLE FROM read_parquet(
            '{out}/projections/**/*.parquet', hive_partitioning = true)
        WHERE token IN (' paris', 'paris', '##paris') AND side = 'top'
        ORDER BY zscore DESC, model, layer, "index" LIMIT 10""").fetchall()
    assert got == expected
    (n,) = con.execute(f"SELECT count(*) FROM '{out}/tokens.parquet'").fetchone()  # type: ignore[misc]
    assert n > 0


def test_export_refuses_a_non_empty_folder(store_copy: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    assert main(["export", "--parquet", str(tmp_path / "busy"), "--db", str(store_copy)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]
