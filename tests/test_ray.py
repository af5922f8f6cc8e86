"""The Ray executor against a local Ray instance: the store it writes equals a local run's, row for row
(vector ids included); a unit that fails on a worker leaves the store as it was; a missing Ray is one clear
error."""

import json
import os
import sys
from pathlib import Path

import duckdb
import pytest

from indexer import IndexOptions, index_checkpoint
from indexer.index import run as run_module
from schema.errors import LensdbError
from tests.tinymodels import TinyModel

ROOT = Path(__file__).resolve().parents[1]
DATA = {
    "vectors": "SELECT * FROM vectors ORDER BY vector_id",
    "vector_tokens": "SELECT * FROM vector_tokens ORDER BY vector_id, side, rank",
    "vector_units": "SELECT * FROM vector_units ORDER BY first_vector_id",
    "checkpoints": "SELECT checkpoint_id, model_id, label, content_hash FROM checkpoints ORDER BY checkpoint_id",
}


@pytest.fixture(scope="module")
def ray_local():
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not installed (pip install 'lensdb[ray]')")
    # workers import this checkout's lensdb, not whichever one the interpreter has installed
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def _rows(db: Path) -> dict[str, list]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {table: con.execute(sql).fetchall() for table, sql in DATA.items()}


def _compute_flags(db: Path) -> dict:
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute("SELECT basis_flags FROM index_runs").fetchone()
    assert row is not None
    return json.loads(row[0])


@pytest.mark.parametrize("tiny", ["tiny_gpt2", "tiny_bert"])  # BERT: every unit has its own carried basis
def test_ray_run_equals_local_run(ray_local, tiny: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model: TinyModel = request.getfixturevalue(tiny)
    local, remote = tmp_path / "local.duckdb", tmp_path / "ray.duckdb"
    opts = {"name": tiny, "top_k": 5, "device": "cpu", "components": None}
    index_checkpoint(local, model.path, IndexOptions(**opts))
    # two workers finish units in any order; the writer takes them in plan order
    result = index_checkpoint(remote, model.path, IndexOptions(**opts, executor="ray", ray_workers=2))
    assert result.status == "indexed" and result.n_vectors > 0
    a, b = _rows(local), _rows(remote)
    for table in DATA:
        assert a[table] == b[table], table
    flags = _compute_flags(remote)
    assert flags["compute"]["executor"] == "ray" and flags["compute"]["workers"] == 2
    assert flags["compute"]["worker_devices"] == ["cpu"]
    assert _compute_flags(local)["compute"]["executor"] == "local"
    local_flags = _compute_flags(local)
    assert {k: v for k, v in flags.items() if k != "compute"} == {k: v for k, v in local_flags.items()
                                                                    if k != "compute"}


def test_failing_unit_on_a_worker_leaves_store_unchanged(ray_local, tiny_gpt2: TinyModel, tiny_bert: TinyModel,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "lens.duckdb"
    index_checkpoint(db, tiny_bert.path, IndexOptions(name="bert-tiny", top_k=5, device="cpu"))
    before = _rows(db)
    plan = run_module.plan_units

    def bad_plan(adapter, components):  # the driver plans a layer the checkpoint does not have
        return [*plan(adapter, components), ("ff_value", 99)]

    monkeypatch.setattr(run_module, "plan_units", bad_plan)
    with pytest.raises(LensdbError, match="unit ff_value layer 99 failed on a Ray worker"):
        index_checkpoint(db, tiny_gpt2.path, IndexOptions(name="gpt2-tiny", top_k=5, device="cpu",
                                                           executor="ray", ray_workers=2))
    assert _rows(db) == before
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT status FROM run_attempts ORDER BY attempt_id").fetchall() == [
            ("complete",), ("failed",)]


def test_missing_ray_is_one_clear_error(tiny_gpt2: TinyModel, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    db = tmp_path / "lens.duckdb"
    with pytest.raises(LensdbError, match=r"pip install 'lensdb\[ray\]'"):
        index_checkpoint(db, tiny_gpt2.path, IndexOptions(executor="ray", address="ray://nowhere:10001"))
    assert not db.exists()


def test_address_without_ray_executor_is_refused(tiny_gpt2: TinyModel, tmp_path: Path) -> None:
    with pytest.raises(LensdbError, match="go with --executor ray"):
        index_checkpoint(tmp_path / "lens.duckdb", tiny_gpt2.path, IndexOptions(address="auto"))


def test_cli_index_with_ray(ray_local, tiny_gpt2: TinyModel, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    db = tmp_path / "lens.duckdb"
    assert main(["index", str(tiny_gpt2.path), "--db", str(db), "--top-k", "3", "--device", "cpu",
                 "--component", "ff_value", "--executor", "ray", "--ray-workers", "1", "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "indexed"
    assert _compute_flags(db)["compute"]["workers"] == 1
