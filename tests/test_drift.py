"""Drift across training on a planted change: FF value (1, 7) re-pointed from ' paris' to ' london' between
two checkpoints must top "what changed most", and ' paris' must fall from rank 1 to absent. Checked through
the Python API, the SQL views, the CLI and the HTTP service (in-process), plus the watcher inside serve."""

import asyncio
import shutil
import time
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file, save_file

import queries
from indexer.watch.cycle import register_source, watch_cycle
from service.app import create_app
from service.cli import main
from service.settings import Settings
from tests.tinymodels import _plant, save_gpt2


def _run_folder(root: Path) -> Path:
    """checkpoint-100 (planted paris), checkpoint-200 (neuron re-pointed to london), checkpoint-300 (= 100)."""
    run = root / "run"
    save_gpt2(run / "checkpoint-100", seed=0)
    moved = save_gpt2(run / "checkpoint-200", seed=0)
    weights = run / "checkpoint-200" / "model.safetensors"
    state = load_file(weights)
    state["transformer.h.1.mlp.c_proj.weight"][7] = _plant(state["transformer.wte.weight"], moved.token_id("london"))
    save_file(state, weights, metadata={"format": "pt"})
    shutil.copytree(run / "checkpoint-100", run / "checkpoint-300")
    for ck in run.iterdir():
        (ck / "trainer_state.json").write_text('{"global_step": 0}')
    return run


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run_folder(tmp_path_factory.mktemp("drift"))


@pytest.fixture(scope="module")
def store(run_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("store") / "lens.duckdb"
    register_source(db, "tiny", run_folder, top_k=10)
    report = watch_cycle(db, settle_s=0, look_gap_s=0)
    assert (report.n_indexed, report.n_linked) == (2, 1)
    return db


def test_the_repointed_neuron_changed_most_and_paris_leaves_its_top_k(store: Path) -> None:
    with queries.connect(store) as lens:
        changed = lens.changed_most("tiny", "checkpoint-100", "checkpoint-200", limit=5)
        top = changed[0]
        assert (top.component, top.layer, top.index, top.shared, top.overlap) == ("ff_value", 1, 7, 0, 0.0)
        assert (top.top_from, top.top_to) == (" paris", " london")
        assert all(c.overlap == 1.0 and c.norm_change == 0.0 for c in changed[1:])
        assert lens.changed_most("tiny", 100, 200, component="ff_key", limit=1)[0].overlap == 1.0

        ranks = lens.token_rank_over_training("tiny", "paris", "ff_value", 1, 7)
        assert [(r.checkpoint, r.step, r.rank, r.linked_to) for r in ranks] == [
            ("checkpoint-100", 100, 1, None), ("checkpoint-200", 200, None, None),
            ("checkpoint-300", 300, 1, "tiny/checkpoint-100")]
        assert ranks[1].top_k == 10 and ranks[1].score is None

        drift = lens.drift_vector("tiny", "ff_value", 1, 7, k=3)
        assert [(d.checkpoint, d.shared, d.overlap) for d in drift] == [
            ("checkpoint-100", None, None), ("checkpoint-200", 0, 0.0), ("checkpoint-300", 0, 0.0)]
        assert [d.top[0].token for d in drift] == [" paris", " london", " paris"]
        steady = lens.drift_vector("tiny", "ff_value", 1, 8)
        assert [d.jaccard for d in steady] == [None, 1.0, 1.0]

        # the same answers from the documented views
        rows = lens.sql("""SELECT checkpoint, shared, overlap FROM vector_drift WHERE model = 'tiny'
            AND component = 'ff_value' AND layer = 1 AND "index" = 7 ORDER BY step""").rows
        assert rows == [["checkpoint-100", None, None], ["checkpoint-200", 0, 0.0], ["checkpoint-300", 0, 0.0]]
        assert lens.sql("SELECT checkpoint, linked_to FROM checkpoint_steps ORDER BY step").rows[-1] == [
            "checkpoint-300", "tiny/checkpoint-100"]


def test_drift_errors_say_what_exists(store: Path) -> None:
    with queries.connect(store) as lens:
        with pytest.raises(queries.NotFound, match="checkpoint-100 \\(step 100\\)"):
            lens.changed_most("tiny", "checkpoint-100", "nope")
        with pytest.raises(queries.NotFound, match="no indexed steps of model 'ghost'"):
            lens.steps("ghost")
        with pytest.raises(queries.NotFound, match="layers run 0–1"):
            lens.drift_vector("tiny", "ff_value", 9, 7)
        with pytest.raises(queries.UnknownToken):
            lens.token_rank_over_training("tiny", "zzzzqq", "ff_value", 1, 7)


def test_cli_drift_and_changed(store: Path, capsys) -> None:
    db = ["--db", str(store)]
    assert main(["changed", "tiny", "100", "200", "--limit", "1", *db]) == 0
    out = capsys.readouterr().out
    assert "ff_value" in out and "' london'" in out
    assert main(["drift", "tiny", "ff_value", "1", "7", "--token", "paris", *db]) == 0
    out = capsys.readouterr().out
    assert "not in top 10" in out and "tiny/checkpoint-100" in out
    assert main(["drift", "tiny", "ff_value", "1", "7", "--k", "2", "--json", *db]) == 0
    assert '"overlap": 0.0' in capsys.readouterr().out
    assert main(["changed", "tiny", "100", "999", *db]) == 1
    assert "has no checkpoint or step '999'" in capsys.readouterr().err


def _call(app, method: str, url: str, **kw) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
            return await c.request(method, url, **kw)

    return asyncio.run(go())


def test_service_answers_drift_and_draws_the_rank(store: Path, tmp_path: Path) -> None:
    db = tmp_path / "lens.duckdb"
    shutil.copy(store, db)
    app = create_app(Settings(db=db))
    try:
        r = _call(app, "GET", "/changed/tiny", params={"from": "checkpoint-100", "to": "200", "limit": 2})
        assert r.status_code == 200, r.text
        first = r.json()[0]
        assert (first["component"], first["layer"], first["index"], first["overlap"]) == ("ff_value", 1, 7, 0.0)
        r = _call(app, "GET", "/drift/tiny/ff_value/1/7/rank", params={"token": "paris"})
        assert [x["rank"] for x in r.json()] == [1, None, 1]
        r = _call(app, "GET", "/drift/tiny/ff_value/1/7", params={"k": 2})
        assert [x["overlap"] for x in r.json()] == [None, 0.0, 0.0] and len(r.json()[0]["top"]) == 2
        assert [s["linked_to"] for s in _call(app, "GET", "/models/tiny/steps").json()] == [
            None, None, "tiny/checkpoint-100"]
        assert _call(app, "GET", "/sources").json()[0]["linked"] == 1
        assert _call(app, "GET", "/watch").json()[0]["n_indexed"] == 2
        r = _call(app, "GET", "/changed/tiny", params={"from": "checkpoint-100", "to": "nope"})
        assert r.status_code == 404 and "checkpoint-300 (step 300)" in r.json()["detail"]
        assert _call(app, "GET", "/changed/tiny", params={"from": "checkpoint-100"}).status_code == 422
        page = _call(app, "GET", "/vector/tiny/ff_value/1/7/training", params={"token": "paris"})
        assert page.status_code == 200 and "<svg" in page.text
        assert page.text.count("class='rank'") == 2 and page.text.count("class='absent'") == 1
        assert "over training" in _call(app, "GET", "/vector/tiny/ff_value/1/7").text
    finally:
        app.state.owner.close()


def test_serve_with_watch_every_indexes_registered_models_through_jobs(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    db = tmp_path / "lens.duckdb"
    app = create_app(Settings(db=db, watch_every="1h", watch_settle_s=0, allow_dir=[tmp_path]))
    try:
        deadline = time.time() + 10  # the first cycle runs at start-up, with nothing registered yet
        while not ((runs := _call(app, "GET", "/watch").json()) and runs[0]["status"] == "ok"):
            assert time.time() < deadline, runs
            time.sleep(0.05)
        r = _call(app, "POST", "/sources", json={"name": "tiny", "path": str(run), "top_k": 5})
        assert r.status_code == 200 and r.json()["source"]["kind"] == "trainer"
        # the next cycle is an hour away: run one now, as the watcher thread does, through the job queue
        report = app.state.owner.watch_once()
        assert (report.n_indexed, report.n_linked) == (2, 1)
        assert [j["status"] for j in _call(app, "GET", "/jobs").json()["items"]] == ["done"] * 3
        assert [r["status"] for r in _call(app, "GET", "/watch").json()] == ["ok", "ok"]
        steps = _call(app, "GET", "/models/tiny/steps").json()
        assert [s["checkpoint"] for s in steps] == ["checkpoint-100", "checkpoint-200", "checkpoint-300"]
    finally:
        app.state.owner.close()
