"""Issue 17: readers beside the service. One Lens interface, two implementations — ``queries.connect(file)`` and
``queries.connect("http://…")`` — and one suite run against both; the command line reading through a live
service (and ignoring a stale note); ``connect`` twice in one process; the memory limit of user SQL; the
service's one write queue under concurrent POSTs; cancelling index jobs.

Real servers (`lensdb serve` in its own process on 127.0.0.1), real DuckDB files; nothing of ours mocked.
"""

import contextlib
import inspect
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from service_fixtures import PLANTED_INDEX, PLANTED_LAYER, build_store, free_port, tiny_gpt2, wait_until_serving

import queries
from indexer import IndexOptions, index_checkpoint
from indexer.analyses.align import align_models
from indexer.analyses.trace import TraceOptions, trace_input
from indexer.watch.cycle import register_source
from queries.readonly import Limits
from queries.remote import ERRORS, RemoteLens
from schema.errors import InvalidFilter, LensdbError, NotFound, StoreError, UnknownToken
from schema.writer import writer
from service.cli import main
from service.problems import PROBLEMS
from tests.tinymodels import save_gpt2

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def serving(db: Path, *flags: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`lensdb serve` on ``db`` in its own process; yields its URL and stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--db", str(db), "--port", str(port),
                             *flags], cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    headers = {"Authorization": f"Bearer {env['LENSDB_TOKEN']}"} if env and "LENSDB_TOKEN" in env else {}
    try:
        wait_until_serving(proc, url, headers=headers)
        yield url
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def rich_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every kind of row a Lens reads: two models (one with two checkpoints), head maps, a trace with an
    intervention and its baseline, an alignment, a registered source."""
    root = tmp_path_factory.mktemp("rich")
    db = build_store(root)
    heads = save_gpt2(root / "heads", plant_heads=True)
    index_checkpoint(db, heads.path, IndexOptions(name="heads", head_maps=True, top_k=10, device="cpu"))
    trace_input(db, TraceOptions(model="tiny", prompt="paris london berlin", zero=[f"{PLANTED_LAYER}.3"]))
    align_models(db, "tiny", "other")
    register_source(db, "tiny", root / "tiny")
    return db


@pytest.fixture(scope="module")
def served_copy(rich_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    db = tmp_path_factory.mktemp("served") / "lens.duckdb"
    shutil.copy(rich_store, db)
    with serving(db, "--warm", "false") as url:
        yield url, db


@pytest.fixture(params=["file", "http"])
def lens(request: pytest.FixtureRequest, rich_store: Path, served_copy: tuple[str, Path]) -> Iterator[queries.Lens]:
    """The same store behind each implementation of the one Lens interface."""
    with queries.connect(rich_store if request.param == "file" else served_copy[0]) as opened:
        yield opened


# ---- one interface -------------------------------------------------------------------------------------------


def test_remote_lens_answers_every_lens_method_with_the_same_signature() -> None:
    public = {n for n, f in inspect.getmembers(queries.Lens, inspect.isfunction) if not n.startswith("_")}
    assert {"promoters", "vector", "trace", "alignment", "sql", "check", "warm"} <= public
    for name in public:
        assert getattr(RemoteLens, name) is not getattr(queries.Lens, name), f"RemoteLens does not answer {name}"
        assert inspect.signature(getattr(RemoteLens, name)) == inspect.signature(getattr(queries.Lens, name)), name


def test_remote_errors_are_the_problem_types_the_service_answers_with() -> None:
    kinds = {kind: cls for cls, _, kind, _ in PROBLEMS}
    for kind, cls in ERRORS.items():
        assert kinds[kind] is cls
    # a file's Lens never refuses a path or is busy: those reach a remote caller as a LensdbError with the detail
    service_only = {"path-not-allowed", "busy"}
    assert {k for k, c in kinds.items() if c is not LensdbError} - service_only == set(ERRORS)


# ---- one suite, both implementations ---------------------------------------------------------------------------


def test_promoters_and_suppressors(lens: queries.Lens) -> None:
    hits = lens.promoters("paris", model="tiny", checkpoint="all", component="ff_value")
    assert (hits[0].layer, hits[0].index) == (PLANTED_LAYER, PLANTED_INDEX)
    assert {h.checkpoint for h in hits} == {"checkpoint-100", "checkpoint-200"}
    assert lens.promoters("paris", queries.HitFilter(limit=3, offset=1)) == lens.promoters("paris", limit=4)[1:]
    many = lens.promoters("paris", checkpoint="all", role="all", limit=450)  # more than one page of the service
    assert len(many) == 450 and many == sorted(many, key=lambda h: -h.zscore)
    assert lens.suppressors(3, model="other")  # by token id
    pairs = lens.promoters("queen", component="attn_ov_pair")
    assert pairs and pairs[0].source_token == " king"


def test_vectors_tokens_models(lens: queries.Lens) -> None:
    v = lens.vector("tiny", "ff_value", PLANTED_LAYER, PLANTED_INDEX, checkpoint="checkpoint-200")
    assert v.top[0].token == "paris" and v.checkpoint == "checkpoint-200"
    assert [m.model for m in lens.tokens("paris")] == ["heads", "other", "tiny"]
    assert {m.name for m in lens.models()} == {"tiny", "other", "heads"}
    detail = lens.model("tiny")
    assert [c.label for c in detail.checkpoints] == ["checkpoint-100", "checkpoint-200"]
    assert detail.components == lens.component_counts("tiny")
    runs, total = lens.runs(limit=2)
    assert len(runs) == 2 and total == 4
    assert lens.head_map("king", kind="ov", model="heads", limit=3)[0].targets


def test_training_traces_alignments(lens: queries.Lens) -> None:
    assert [s.checkpoint for s in lens.steps("tiny")] == ["checkpoint-100", "checkpoint-200"]
    assert len(lens.drift_vector("tiny", "ff_value", PLANTED_LAYER, PLANTED_INDEX, k=3)) == 2
    ranks = lens.token_rank_over_training("tiny", "paris", "ff_value", PLANTED_LAYER, PLANTED_INDEX)
    assert [r.rank for r in ranks] == [1, 1]
    assert lens.changed_most("tiny", "checkpoint-100", 200, limit=3)
    assert [s.name for s in lens.registered()] == ["tiny"] and lens.watch_runs() == []
    traces = lens.traces()
    assert len(traces) == 2 and traces[0].baseline_trace_id == traces[1].trace_id
    t = lens.trace(traces[0].trace_id, position=0)
    assert t.position == 0 and t.interventions == [f"zero {PLANTED_LAYER}.3"]
    run = lens.alignment(lens.alignments()[0].alignment_id, layer_a=0, limit=5)
    assert len(run.matches) == 5 and {m.layer_a for m in run.matches} == {0}
    assert lens.alignment(1, matches=False).matches == []


def test_sql_check_and_errors(lens: queries.Lens) -> None:
    got = lens.sql("SELECT model, count(*) AS n FROM vector_info GROUP BY model ORDER BY model", max_rows=2)
    assert got.columns == ["model", "n"] and len(got.rows) == 2 and got.truncated
    report = lens.check()
    assert report.ok and report.checkpoints == 4 and report.pair_rows > 0
    with pytest.raises(UnknownToken, match="token 'zzz' is not in any indexed vocabulary"):
        lens.promoters("zzz")
    with pytest.raises(NotFound, match="no model 'nope'"):
        lens.vector("nope", "ff_value", 0, 0)
    with pytest.raises(queries.SqlRefused, match="only SELECT"):
        lens.sql("DELETE FROM models")
    with pytest.raises(queries.SqlTimeout):
        lens.sql("SELECT count(*) FROM range(100000000000)", timeout_s=0.5)
    with pytest.raises(LensdbError, match="bad search filter"):
        lens.promoters("paris", colour="red")
    assert lens.warm().seconds >= 0


CALLS: list[tuple[str, Callable[[queries.Lens], Any]]] = [
    ("promoters all", lambda x: x.promoters("paris", checkpoint="all", limit=300)),
    ("suppressors", lambda x: x.suppressors("london", model="tiny", layer=0)),
    ("promoters by id", lambda x: x.promoters(5, offset=2, limit=7)),
    ("head pairs", lambda x: x.promoters("queen", component="attn_ov_pair", limit=30)),
    ("contrast", lambda x: x.promoters("paris", minus="london", model="tiny", checkpoint="all", limit=250)),
    ("set", lambda x: x.suppressors(["paris", "berlin"], component="ff_value", limit=12, offset=3)),
    ("several minus", lambda x: x.promoters(["paris"], minus=["london", "berlin"], model="other")),
    ("text", lambda x: x.promoters(text="paris london", layer=1, limit=5)),
    ("text and tokens", lambda x: x.promoters("paris", text="paris london")),
    ("nothing to search", lambda x: x.suppressors(minus="london")),
    ("tokens", lambda x: x.tokens("Paris")),
    ("vector", lambda x: x.vector("heads", "attn_ov_pair", 1, 0, head=2)),
    ("vector latest", lambda x: x.vector("tiny", "ff_key", 1, 5)),
    ("head map", lambda x: x.head_map("dog", kind="qk", limit=8, per_head=3)),
    ("runs", lambda x: x.runs(limit=3, offset=1)),
    ("models", lambda x: x.models()),
    ("model", lambda x: x.model("heads")),
    ("steps", lambda x: x.steps("tiny")),
    ("drift", lambda x: x.drift_vector("tiny", "ff_value", 1, 7, k=4)),
    ("rank", lambda x: x.token_rank_over_training("tiny", "london", "ff_value", 0, 3, side="bottom")),
    ("changed", lambda x: x.changed_most("tiny", "checkpoint-100", "checkpoint-200", component="ff_key")),
    ("registered", lambda x: x.registered()),
    ("watch runs", lambda x: x.watch_runs()),
    ("traces", lambda x: x.traces(limit=1, offset=1)),
    ("trace", lambda x: x.trace(1)),
    ("alignments", lambda x: x.alignments()),
    ("alignment", lambda x: x.alignment(1)),
    ("sql", lambda x: x.sql("SELECT token, rank, round(zscore, 4) AS z FROM projections WHERE token = 'paris' "
                            "ORDER BY z DESC, rank LIMIT 5")),
    ("check", lambda x: x.check()),
    ("unknown token", lambda x: x.promoters("zzz", model="tiny")),
    ("unknown model", lambda x: x.steps("nope")),
    ("no such checkpoint", lambda x: x.promoters("paris", model="tiny", checkpoint="checkpoint-9")),
    ("no such vector", lambda x: x.vector("tiny", "ff_value", 9, 0)),
    ("no such trace", lambda x: x.trace(99)),
    ("position out of range", lambda x: x.trace(1, position=40)),
    ("no head maps", lambda x: x.head_map("paris", model="tiny")),
    ("refused sql", lambda x: x.sql("SELECT * FROM read_csv('/etc/passwd')")),
    ("bad kind", lambda x: x.head_map("king", kind="xy")),
]


def _answer(call: Callable[[queries.Lens], Any], lens: queries.Lens, store: Path) -> Any:
    try:
        got = call(lens)
    except LensdbError as err:  # the same message, but for which copy of the store it names
        return ("error", type(err), str(err).replace(str(store), "STORE"))
    def dump(v: Any) -> Any:
        return v.model_dump(mode="json") if hasattr(v, "model_dump") else v

    return [dump(v) for v in got] if isinstance(got, list) else (
        ([dump(v) for v in got[0]], got[1]) if isinstance(got, tuple) else dump(got))


@pytest.mark.parametrize("call", [c for _, c in CALLS], ids=[n for n, _ in CALLS])
def test_the_same_rows_and_errors_from_the_file_and_the_service(call, rich_store: Path,
                                                                 served_copy: tuple[str, Path]) -> None:
    with queries.connect(rich_store) as on_file, queries.connect(served_copy[0]) as remote:
        assert _answer(call, remote, served_copy[1]) == _answer(call, on_file, rich_store)


# ---- the command line beside the service --------------------------------------------------------------------


def test_cli_reads_through_the_service_that_owns_the_file(served_copy: tuple[str, Path]) -> None:
    url, db = served_copy
    with pytest.raises(StoreError, match=f"queries.connect\\('{url}'\\)"):
        queries.connect(db)  # the service holds the file; the error says how to read beside it
    code, out, err = cli("promoters", "paris", "--db", str(db), "--model", "tiny", "--limit", "1", "--verbose")
    assert code == 0 and "asking the service" in err and url in err, err
    assert f" {PLANTED_INDEX} " in out.splitlines()[2]
    for argv in (["sql", "SELECT count(*) AS n FROM models"], ["check"], ["models"], ["alignments", "--id", "1"],
                 ["drift", "tiny", "ff_value", "1", "7", "--token", "paris"], ["head-map", "king"]):
        code, out, err = cli(*argv, "--db", str(db))
        assert code == 0, (argv, err)
    assert cli("check", "--db", str(db))[1].startswith("ok: 4 checkpoints")
    code, out, err = cli("vector", "nope", "ff_value", "0", "0", "--db", str(db))
    assert code == 1 and err.startswith("lensdb: error: no model 'nope'") and err.count("\n") == 1
    # writes go through the service too: a trace, then forgetting it along with its model's checkpoint
    code, out, err = cli("trace", "other", "paris london", "--db", str(db))
    assert code == 0 and "traced other/other as trace" in out, err


def test_a_stale_note_is_ignored(rich_store: Path, tmp_path: Path) -> None:
    db = tmp_path / "lens.duckdb"
    shutil.copy(rich_store, db)
    Path(f"{db}.server").write_text(f"http://127.0.0.1:{free_port()}\n")  # nothing listens there
    code, out, err = cli("promoters", "paris", "--db", str(db), "--limit", "1", "--verbose")
    assert code == 0 and "ignoring the stale note" in err and "paris" in out


def test_a_note_of_a_service_owning_another_file_is_ignored(rich_store: Path, tmp_path: Path,
                                                            served_copy: tuple[str, Path]) -> None:
    db = tmp_path / "lens.duckdb"
    shutil.copy(rich_store, db)
    Path(f"{db}.server").write_text(served_copy[0] + "\n")
    code, _, err = cli("models", "--db", str(db), "--verbose")
    assert code == 0 and "ignoring the stale note" in err


def test_a_service_with_a_token_is_asked_with_it(rich_store: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "lens.duckdb"
    shutil.copy(rich_store, db)
    monkeypatch.delenv("LENSDB_TOKEN", raising=False)
    with serving(db, "--token", "s3cret", env={"LENSDB_TOKEN": "s3cret"}) as url:
        code, _, err = cli("models", "--db", str(db))
        assert code == 1 and "needs its token: pass --token or set LENSDB_TOKEN" in err, err
        assert cli("models", "--db", str(db), "--token", "s3cret")[0] == 0
        assert cli("drift", "tiny", "ff_value", "1", "7", "--db", str(db), "--access-token", "s3cret")[0] == 0
        monkeypatch.setenv("LENSDB_TOKEN", "s3cret")
        assert cli("tokens", "paris", "--db", str(db))[0] == 0
        with queries.connect(url) as remote:
            assert remote.promoters("paris", limit=1)
        with queries.connect(url, token="wrong") as remote, pytest.raises(LensdbError, match="needs its token"):
            remote.models()


# ---- connect, again and again ----------------------------------------------------------------------------------


def test_connect_twice_and_other_connections_keep_their_abilities(rich_store: Path, tmp_path: Path) -> None:
    db = tmp_path / "lens.duckdb"
    shutil.copy(rich_store, db)
    csv = tmp_path / "mine.csv"
    csv.write_text("word,note\nparis,capital\n")
    first = queries.connect(db)
    second = queries.connect(db)  # a notebook cell run twice
    assert first.promoters("paris", limit=3) == second.promoters("paris", limit=3)
    # the user's own DuckDB connections can still read files and join them against the store
    assert duckdb.connect().execute("SELECT * FROM read_csv(?)", [str(csv)]).fetchall() == [("paris", "capital")]
    with duckdb.connect(str(db), read_only=True) as own:
        joined = own.execute("SELECT count(*) FROM read_csv(?) c JOIN tokens t ON t.word = c.word",
                             [str(csv)]).fetchone()
        assert joined is not None and joined[0] >= 2
    # the locked connection still refuses files, and its settings stay put
    with pytest.raises(queries.SqlRefused, match="'read_csv' is not allowed"):
        first.sql(f"SELECT * FROM read_csv('{csv}')")
    with pytest.raises(duckdb.PermissionException):  # the lock holds without the allow-list too
        first.con.execute(f"SELECT * FROM read_csv('{csv}')")
    first.close()
    assert second.models()
    with pytest.raises(StoreError, match="in use"), writer(db):
        pass  # readers hold the file
    second.close()
    with writer(db) as con:  # the last reader gave the file back
        con.execute("SELECT 1")
    third = queries.connect(db)
    del third  # a Lens never closed is given back when it is collected
    import gc

    gc.collect()
    with writer(db):
        pass


# ---- the memory limit of user SQL -----------------------------------------------------------------------------

# ~3 GB of one aggregate, from allow-listed functions only
BIG = "SELECT length(string_agg(md5(range::VARCHAR) || md5(range::VARCHAR), '')) FROM range(50000000)"


def test_a_query_past_its_memory_limit_is_refused_while_others_keep_answering(rich_store: Path, tmp_path: Path) -> None:
    with queries.connect(rich_store, limits=Limits(memory_limit="200MB")) as tight, \
            queries.connect(rich_store) as other:
        with pytest.raises(queries.SqlRefused, match=r"needs more memory than one query may take here "
                                                     r"\(47\.7 MiB, a 4th of memory_limit 190\.7 MiB\)"):
            tight.sql(BIG)
        assert tight.promoters("paris", limit=2) and other.sql("SELECT count(*) FROM projections").rows
    db = tmp_path / "lens.duckdb"
    shutil.copy(rich_store, db)
    with serving(db, "--memory-limit", "200MB", "--warm", "false") as url:
        stop = threading.Event()
        answered: list[int] = []

        def second_client() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                while not stop.is_set():
                    answered.append(c.get("/promoters", params={"token": "paris", "limit": 5}).status_code)
                    answered.append(c.post("/sql", json={"sql": "SELECT count(*) FROM projections"}).status_code)

        worker = threading.Thread(target=second_client)
        worker.start()
        try:
            with httpx.Client(base_url=url, timeout=60) as c:
                for _ in range(3):
                    r = c.post("/sql", json={"sql": BIG})
                    assert r.status_code == 400 and "needs more memory" in r.json()["detail"], r.text
                    assert r.headers["content-type"].startswith("application/problem+json")
        finally:
            stop.set()
            worker.join(60)
        assert answered and set(answered) == {200}, answered
        assert httpx.get(f"{url}/health").json()["status"] == "ok"


# ---- one write queue ------------------------------------------------------------------------------------------


def test_concurrent_writes_never_fail_and_all_are_stored(rich_store: Path, tmp_path: Path) -> None:
    """Three POST /align, three POST /traces, two POST /index and four POST /sources at once: no 5xx, every one
    stored, ids unique (before the one write queue, registrations racing each other took the same id: 500)."""
    db = tmp_path / "lens.duckdb"
    shutil.copy(rich_store, db)
    fresh = [tiny_gpt2(tmp_path / f"new-{i}", seed=10 + i) for i in range(2)]
    requests = ([("POST", "/align", {"model_a": "tiny", "model_b": "other", "component": c})
                 for c in ("ff_value", "ff_key", "attn_o")]
                + [("POST", "/traces", {"model": "tiny", "prompt": p}) for p in ("paris", "london paris", "berlin")]
                + [("POST", "/index", {"checkpoint": str(f), "name": f"new-{i}", "top_k": 5})
                   for i, f in enumerate(fresh)]
                + [("POST", "/sources", {"name": f"watched-{i}", "path": str(fresh[i % 2])}) for i in range(4)])
    with serving(db, "--warm", "false", "--allow-dir", str(tmp_path)) as url:
        with queries.connect(url) as remote:
            before_alignments, before_traces = len(remote.alignments()), len(remote.traces())
        go = threading.Barrier(len(requests))
        answers: list[httpx.Response | BaseException] = [None] * len(requests)  # type: ignore[list-item]

        def send(i: int) -> None:
            method, path, body = requests[i]
            with httpx.Client(base_url=url, timeout=300) as c:
                go.wait()
                try:
                    answers[i] = c.request(method, path, json=body)
                except httpx.HTTPError as err:
                    answers[i] = err

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        statuses = [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers]
        assert statuses == [200, 200, 200, 201, 201, 201, 202, 202, 200, 200, 200, 200], [
            a.text[:300] if isinstance(a, httpx.Response) else a for a in answers]
        with httpx.Client(base_url=url, timeout=60) as c:
            for a in answers[6:8]:
                job = a.json()  # type: ignore[union-attr]
                deadline = time.monotonic() + 120
                while (job := c.get(f"/jobs/{job['id']}").json())["status"] in ("queued", "running"):
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
                assert job["status"] == "done", job
        with queries.connect(url) as remote:
            alignments = remote.alignments()
            assert len(alignments) == before_alignments + 3
            assert len({a.alignment_id for a in alignments}) == len(alignments)
            assert len(remote.traces()) == before_traces + 3
            assert {"new-0", "new-1"} <= {m.name for m in remote.models()}
            assert {f"watched-{i}" for i in range(4)} <= {s.name for s in remote.registered()}
            assert remote.check().ok, remote.check().problems


# ---- cancelling index jobs --------------------------------------------------------------------------------------


def _store_rows(url: str) -> list:
    with queries.connect(url) as remote:
        return [remote.sql(f"SELECT count(*) FROM {t}").rows for t in ("checkpoints", "vectors", "vector_tokens")]


def test_delete_cancels_a_running_index_job_and_ctrl_c_cancels_index_server(rich_store: Path, tmp_path: Path) -> None:
    db = tmp_path / "lens.duckdb"
    shutil.copy(rich_store, db)
    marker = tmp_path / "paused"
    ckpt = tiny_gpt2(tmp_path / "slow", seed=21)
    env = {"LENSDB_TEST_PAUSE_AT": "projection", "LENSDB_TEST_PAUSE_MARKER": str(marker), "LENSDB_TEST_PAUSE_S": "3"}
    with serving(db, "--warm", "false", "--allow-dir", str(tmp_path), env=env) as url:
        before = _store_rows(url)
        with httpx.Client(base_url=url, timeout=120) as c:
            job = c.post("/index", json={"checkpoint": str(ckpt), "name": "slow"}).json()
            deadline = time.monotonic() + 60
            while not marker.exists():
                assert time.monotonic() < deadline, "the job never started projecting"
                time.sleep(0.05)
            cancelled = c.delete(f"/jobs/{job['id']}")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
            assert cancelled.json()["cancel_requested"] is True
            assert c.delete("/jobs/999").status_code == 404
        assert _store_rows(url) == before
        with queries.connect(url) as remote:
            assert remote.sql("SELECT status FROM run_attempts ORDER BY attempt_id DESC LIMIT 1").rows == [
                ["cancelled"]]
            assert remote.check().ok
    marker.unlink()
    env["LENSDB_TEST_PAUSE_AT"] = "write"
    with serving(db, "--warm", "false", "--allow-dir", str(tmp_path), env=env) as url:
        before = _store_rows(url)
        # as from a terminal: SIGINT handled, even where this suite runs as a background job (which ignores it)
        client = subprocess.Popen([sys.executable, "-m", "service.cli", "index", str(ckpt), "--server", url],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert client.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=120)
        assert client.returncode == 130, err
        assert "cancelled (nothing of it was written)" in err and "interrupted" in err
        with httpx.Client(base_url=url) as c:
            assert c.get("/jobs").json()["items"][0]["status"] == "cancelled"
        assert _store_rows(url) == before


# ---- issue 18: per-vocabulary tokens, roles, filters that say what exists, frames, vector listings ----------


def test_tokens_resolve_per_vocabulary_and_name_the_models_without_them(lens: queries.Lens) -> None:
    found = lens.tokens("w5")
    assert {m.model for m in found} == {"tiny", "other"} and found.missing == ["heads"]
    hits = lens.promoters("w5", limit=5)
    assert hits.missing == ["heads"] and {m.model for m in hits.matches} == {"tiny", "other"}
    loose = lens.resolution("PARIS")
    assert {m.model for m in loose.matches} == {"heads", "other", "tiny"} and loose.missing == []
    assert {m.form for m in loose.matches} == {"any-case"}


def test_searches_default_to_writers_and_filters_list_what_exists(lens: queries.Lens) -> None:
    readers = {"ff_key", "ff_gate", "attn_q", "attn_k", "attn_v", "attn_ov_svd_in", "attn_qk_svd_q", "attn_qk_svd_k"}
    writers = lens.promoters("paris", limit=200)
    assert writers and not {h.component for h in writers} & (readers | {"attn_ov_pair", "attn_qk_pair"})
    reads = lens.promoters("paris", role="reads", limit=200)
    assert reads and {h.component for h in reads} <= readers
    with pytest.raises(InvalidFilter, match="no component 'ff_values'.*ff_value"):
        lens.promoters("paris", component="ff_values")
    with pytest.raises(InvalidFilter, match="layer 9 is out of range"):
        lens.suppressors("paris", layer=9)


def test_results_become_data_frames_and_vectors_list_by_norm(lens: queries.Lens) -> None:
    hits = lens.promoters("paris", limit=7)
    frame = hits.df()
    assert len(frame) == 7 and frame["model"].tolist() == [h.model for h in hits]
    assert lens.models().pl()["name"].to_list() == [m.name for m in lens.models()]
    page = lens.vectors("tiny", component="ff_value", limit=5)
    assert page.total > 5 and [v.norm for v in page.items] == sorted((v.norm for v in page.items), reverse=True)
    assert len(page.df()) == 5
    by_index = lens.vectors("tiny", component="ff_value", order="index", limit=3)
    assert [(v.layer, v.index) for v in by_index.items] == [(0, 0), (0, 1), (0, 2)]
