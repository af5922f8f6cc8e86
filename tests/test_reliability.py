"""Issue 10: crash safety, fuzzed checkpoints, hostile SQL, `lensdb check`, and the service's gates.

Real DuckDB files, real subprocesses killed with SIGKILL, the CLI called in-process; nothing of ours mocked.
"""

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer import IndexOptions, index_checkpoint
from queries.integrity import check_store
from schema.connect import open_reader
from service.app import create_app
from service.cli import main
from service.settings import Settings, exposure_problem
from tests.test_bad_input import attempts, snapshot
from tests.tinymodels import TinyModel, save_gpt2

ROOT = Path(__file__).resolve().parents[1]


def cli(*argv: str) -> tuple[int, str, str]:
    """``lensdb ARGV`` in-process; an uncaught exception (a traceback) fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def rows_of(db: Path, content_hash: str) -> list[tuple]:
    """Everything indexed for one checkpoint, without the ids the writer assigned."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(
            "SELECT v.component, v.layer, v.head, v.idx, v.norm, v.logit_mean, v.logit_std, p.side, p.rank, "
            "p.token_id, p.score, p.zscore FROM vectors v JOIN checkpoints c USING (checkpoint_id) "
            "JOIN vector_tokens p USING (vector_id) WHERE c.content_hash = ? ORDER BY ALL", [content_hash]
        ).fetchall()
    finally:
        con.close()


def hashes(db: Path) -> set[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT content_hash FROM checkpoints").fetchall()}
    finally:
        con.close()


# ---- crash safety -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory, indexed_store: Path) -> tuple[TinyModel, str, list[tuple]]:
    """A checkpoint to kill runs of, its content hash, and the rows an uninterrupted run writes."""
    tiny = save_gpt2(tmp_path_factory.mktemp("victim") / "victim", seed=5)
    db = tmp_path_factory.mktemp("reference") / "lens.duckdb"
    shutil.copy(indexed_store, db)
    result = index_checkpoint(db, tiny.path, IndexOptions(name="victim", device="cpu"))
    return tiny, result.content_hash, rows_of(db, result.content_hash)


def start_paused(db: Path, ckpt: Path, point: str, marker: Path, pause_s: str = "3600") -> subprocess.Popen:
    env = {**os.environ, "LENSDB_TEST_PAUSE_AT": point, "LENSDB_TEST_PAUSE_MARKER": str(marker),
           "LENSDB_TEST_PAUSE_S": pause_s}
    return subprocess.Popen([sys.executable, "-m", "service.cli", "index", str(ckpt), "--db", str(db), "--name",
                             "victim", "--quiet", "--device", "cpu"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the index run ended before its pause point:\n{proc.communicate()[0]}")
        assert time.monotonic() < deadline, "the index run never reached its pause point"
        time.sleep(0.005)


@pytest.mark.parametrize("point", ["projection", "write", "commit", "commit-race"])
def test_sigkill_mid_run_leaves_the_store_as_it_was(point: str, victim, store_copy: Path, tmp_path: Path) -> None:
    """Kill `lensdb index` at each point: the file opens, holds nothing of the run, the attempt is logged,
    and a re-run gives the same rows as an uninterrupted run. ``commit-race`` does not pause: the kill lands
    as the run reaches COMMIT, so either the whole checkpoint is there or none of it."""
    tiny, content_hash, reference = victim
    before = snapshot(store_copy)
    marker = tmp_path / "reached"
    race = point == "commit-race"
    proc = start_paused(store_copy, tiny.path, "commit" if race else point, marker, "0" if race else "3600")
    try:
        wait_for(marker, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode in (-signal.SIGKILL, 0)

    open_reader(store_copy).close()  # opens, schema version checked
    report = check_store(con := open_reader(store_copy))
    con.close()
    assert report.ok, report.problems
    if race and content_hash in hashes(store_copy):  # the commit won the race: all of it is there
        assert rows_of(store_copy, content_hash) == reference
        assert attempts(store_copy)[-1] == ("complete", None)
        return
    assert snapshot(store_copy) == before
    assert content_hash not in hashes(store_copy)
    assert attempts(store_copy)[-1] == ("running", None)
    assert any("did not finish" in n or "running" in n for n in report.notes)

    result = index_checkpoint(store_copy, tiny.path, IndexOptions(name="victim", device="cpu"))
    assert result.status == "indexed"
    assert rows_of(store_copy, content_hash) == reference
    (killed, killed_error), (rerun, _) = attempts(store_copy)[-2:]
    assert (killed, rerun) == ("interrupted", "complete") and "process ended" in killed_error
    assert cli("check", "--db", str(store_copy))[0] == 0


# ---- fuzzed checkpoints -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small valid checkpoint and a small store (one other model, top-k 5) to index it into."""
    root = tmp_path_factory.mktemp("fuzz")
    ckpt = save_gpt2(root / "fuzzed", seed=9).path
    db = root / "lens.duckdb"
    index_checkpoint(db, save_gpt2(root / "other", seed=8).path, IndexOptions(name="other", top_k=5, device="cpu"))
    return ckpt, db


FILES = ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"]
config_values = st.one_of(st.integers(-3, 10**7), st.floats(allow_nan=True), st.text(max_size=5), st.none(),
                          st.booleans(), st.lists(st.integers(0, 3), max_size=2))
mutations = st.one_of(
    st.tuples(st.just("flip"), st.sampled_from(FILES),
              st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=6)),
    st.tuples(st.just("flip-header"), st.just("model.safetensors"),
              st.lists(st.tuples(st.integers(0, 600), st.integers(1, 255)), min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.sampled_from(FILES), st.floats(0, 1)),
    st.tuples(st.just("config"), st.sampled_from(["n_layer", "n_embd", "n_head", "vocab_size", "n_inner",
                                                  "model_type", "architectures"]), config_values),
    st.tuples(st.just("delete"), st.sampled_from(FILES), st.none()),
)


def mutate(folder: Path, mutation: tuple) -> None:
    kind, name, arg = mutation
    f = folder / name
    if kind == "delete":
        f.unlink()
    elif kind == "truncate":
        f.write_bytes(f.read_bytes()[: int(arg * f.stat().st_size)])
    elif kind == "config":  # name is the key to change
        cfg = json.loads((folder / "config.json").read_text())
        cfg[name] = arg
        (folder / "config.json").write_text(json.dumps(cfg))
    else:
        raw = bytearray(f.read_bytes())
        for where, xor in arg:
            i = min(int(where * len(raw)) if isinstance(where, float) else where, len(raw) - 1)
            raw[i] ^= xor
        f.write_bytes(bytes(raw))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutation=mutations)
def test_fuzzed_checkpoints_never_crash_or_half_write(fuzz_base: tuple[Path, Path], mutation: tuple) -> None:
    ckpt, base = fuzz_base
    with tempfile.TemporaryDirectory() as tmp:
        folder, db = Path(tmp) / "fuzzed", Path(tmp) / "lens.duckdb"
        shutil.copytree(ckpt, folder)
        shutil.copy(base, db)
        mutate(folder, mutation)
        before = snapshot(db)
        code, _, err = cli("index", str(folder), "--db", str(db), "--name", "fuzzed", "--quiet", "--top-k", "5",
                           "--device", "cpu")
        con = open_reader(db)
        try:
            report = check_store(con)
        finally:
            con.close()
        assert report.ok, report.problems
        if code == 1:
            assert err.startswith("lensdb: error: ") and err.count("\n") == 1, err
            assert snapshot(db) == before
        else:
            assert code == 0, err
            assert attempts(db)[-1] == ("complete", None)
            assert len(hashes(db)) == 2


# ---- hostile SQL ------------------------------------------------------------------------------------------

HOSTILE = [
    "DELETE FROM models",
    "UPDATE models SET name = 'x'",
    "INSERT INTO models SELECT * FROM models",
    "DROP TABLE vectors",
    "CREATE TABLE evil AS SELECT 1",
    "CREATE VIEW evil AS SELECT 1",
    "CREATE MACRO evil(x) AS x",
    "CREATE SECRET evil (TYPE s3, KEY_ID 'x', SECRET 'y')",
    "ALTER TABLE models ADD COLUMN evil INTEGER",
    "TRUNCATE vectors",
    "ATTACH '/tmp/evil.duckdb' AS evil",
    "DETACH memory",
    "USE memory",
    "COPY models TO '/tmp/evil.csv'",
    "COPY (SELECT 1) TO '/tmp/evil.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '/tmp/evil_export'",
    "IMPORT DATABASE '/tmp/evil_export'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/hosts')",
    "SELECT * FROM read_parquet('/tmp/x.parquet')",
    "SELECT * FROM read_json('/etc/passwd')",
    "SELECT * FROM read_ndjson_objects('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM parquet_metadata('/tmp/x.parquet')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'https://example.com/data.parquet'",
    "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
    "SELECT * FROM duckdb_secrets()",
    "PRAGMA enable_profiling",
    "PRAGMA threads=1",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "RESET lock_configuration",
    "SET memory_limit = '1GB'",
    "CALL pragma_version()",
    "CHECKPOINT",
    "VACUUM",
    "INSTALL httpfs",
    "LOAD httpfs",
    "BEGIN TRANSACTION",
    "COMMIT",
    "EXPLAIN ANALYZE SELECT 1",
    "SELECT 1; DROP TABLE models",
    "SELECT 1 /* ; */; DELETE FROM models",
    "SELECT ';'; DELETE FROM models",
    "SELECT 1 -- comment\n; UPDATE models SET name = 'x'",
    "SELECT current_setting('threads'); SET enable_external_access = true",
    "SELECT * FROM query('DELETE FROM models')",
    "SELECT * FROM query_table('models'); DROP TABLE models",
    "SELECT nextval('evil_seq')",
    "SELECT count(*) FROM range(100000000000) a",  # stopped by the time limit
]
REASON = re.compile(r"only SELECT queries are allowed|send exactly one statement|reading files or URLs is not "
                    r"allowed|cannot parse the SQL|does not exist|ran longer than|Expected a single SELECT|"
                    r"not allowed in read-only SQL|not a table or view of this store")


class Asgi:
    """Synchronous requests into the ASGI app, each on its own event loop."""

    def __init__(self, app) -> None:
        self.app = app

    def request(self, method: str, url: str, **kw) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://localhost") as c:
                return await c.request(method, url, **kw)

        return asyncio.run(go())

    def close(self) -> None:
        self.app.state.owner.close()  # idempotent: the fixture closes it again


@pytest.fixture
def served(store_copy: Path):
    def make(**kw: object) -> Asgi:
        app = create_app(Settings(db=store_copy, sql_timeout_s=1.0, **kw))  # type: ignore[arg-type]
        apps.append(app)
        return Asgi(app)

    apps: list = []
    yield make
    for app in apps:
        app.state.owner.close()


def test_hostile_sql_is_refused_on_both_surfaces(store_copy: Path, served) -> None:
    assert len(HOSTILE) >= 30
    before = snapshot(store_copy)
    for stmt in HOSTILE:
        code, _, err = cli("sql", stmt, "--db", str(store_copy), "--timeout", "1")
        assert code == 1 and err.startswith("lensdb: error: ") and err.count("\n") == 1, (stmt, err)
        assert REASON.search(err), (stmt, err)
    assert snapshot(store_copy) == before
    api = served()
    for stmt in HOSTILE:
        r = api.request("POST", "/sql", json={"sql": stmt})
        assert r.status_code in (400, 408), (stmt, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert REASON.search(r.json()["detail"]), (stmt, r.json())
    # still limited in rows, and still answering plain SELECTs
    r = api.request("POST", "/sql", json={"sql": "SELECT * FROM range(100000)", "max_rows": 10})
    assert r.status_code == 200 and len(r.json()["rows"]) == 10 and r.json()["truncated"] is True
    api.close()
    assert snapshot(store_copy) == before


# ---- lensdb check -----------------------------------------------------------------------------------------

DAMAGE = [
    ("DELETE FROM index_runs WHERE checkpoint_id = 1", "has no complete index run record"),
    ("DELETE FROM vectors WHERE vector_id = (SELECT max(vector_id) FROM vectors WHERE checkpoint_id = 1)",
     "its run records"),
    ("DELETE FROM vector_tokens WHERE vector_id = 3 AND side = 'bottom' AND rank = 2", "bottom token rows"),
    ("UPDATE vector_tokens SET token_id = 100000 WHERE vector_id = 4 AND side = 'top' AND rank = 1",
     "holds token id 100000 outside its vocabulary"),
    ("INSERT INTO vector_tokens SELECT 10000000, side, rank, token_id, score, zscore FROM vector_tokens LIMIT 3",
     "3 vector_tokens rows belong to no vector"),
    ("DELETE FROM models WHERE model_id = 2", "belongs to no model"),
    ("UPDATE vectors SET vector_id = 1 WHERE vector_id = 2", "vector id 1 is used by 2 vectors"),
    ("UPDATE vector_lists SET top_scores = list_reverse(top_scores) WHERE vector_id = 5",
     "has token lists that differ from its token rows"),
    ("DELETE FROM vector_lists WHERE vector_id = 6", "has token rows but no vector_lists row"),
]


def test_check_says_ok_on_a_sound_store(store_copy: Path) -> None:
    code, out, _ = cli("check", "--db", str(store_copy))
    assert code == 0 and out.startswith("ok: 2 checkpoints")


@pytest.mark.parametrize("damage, message", DAMAGE, ids=[m for _, m in DAMAGE])
def test_check_names_the_damage(damage: str, message: str, store_copy: Path) -> None:
    con = duckdb.connect(str(store_copy))
    con.execute(damage)
    con.close()
    code, out, err = cli("check", "--db", str(store_copy))
    assert code == 1 and "problem(s) found" in err
    assert message in out, out


# ---- the service's gates ----------------------------------------------------------------------------------


def test_token_protects_api_and_pages(served) -> None:
    api = served(token="s3cret")
    refused = api.request("GET", "/models")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert refused.headers["content-type"].startswith("application/problem+json")
    for path in ("/", "/docs", "/openapi.json", "/health", "/search?token=paris"):
        assert api.request("GET", path).status_code == 401, path
    assert api.request("GET", "/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert api.request("POST", "/sql", json={"sql": "SELECT 1"}).status_code == 401
    ok = api.request("GET", "/promoters", params={"token": "paris"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["items"]
    # a page opened once with ?access_token= sets a cookie and drops the token from the URL
    login = api.request("GET", "/search?token=paris&access_token=s3cret")
    assert login.status_code == 303 and login.headers["location"] == "/search?token=paris"
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = api.request("GET", "/search?token=paris", headers={"Cookie": cookie.split(";")[0]})
    assert page.status_code == 200 and "paris" in page.text
    assert api.request("GET", "/search?access_token=nope").status_code == 401


def test_request_bodies_are_capped(served) -> None:
    api = served(max_body_bytes=1000)
    big = {"sql": "SELECT 1 -- " + "x" * 2000}
    r = api.request("POST", "/sql", json=big)
    assert r.status_code == 413 and r.headers["content-type"].startswith("application/problem+json")
    assert "1000 bytes" in r.json()["detail"]

    async def chunked(data: bytes):  # no Content-Length: buffered up to the cap, then refused
        for i in range(0, len(data), 300):
            yield data[i : i + 300]

    r = api.request("POST", "/sql", content=chunked(json.dumps(big).encode()),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    small = api.request("POST", "/sql", content=chunked(b'{"sql": "SELECT 42 AS x"}'),
                        headers={"Content-Type": "application/json"})
    assert small.status_code == 200 and small.json()["rows"] == [[42]]


def test_serve_refuses_an_open_address_without_a_token(tmp_path: Path) -> None:
    assert Settings().host == "127.0.0.1"
    assert exposure_problem(Settings(host="127.0.0.1")) is None
    assert exposure_problem(Settings(host="::1")) is None
    assert exposure_problem(Settings(host="0.0.0.0", token="t")) is None
    code, _, err = cli("serve", "--host", "0.0.0.0", "--db", str(tmp_path / "x.duckdb"))
    assert code == 1 and "refusing to listen on 0.0.0.0 without a token" in err
    assert not (tmp_path / "x.duckdb").exists()


# ---- concurrency: readers while the service indexes --------------------------------------------------------

CLIENT = r'''
import json, sys, time
from pathlib import Path
import httpx

url, stop = sys.argv[1], Path(sys.argv[2])
CONSISTENT = """SELECT
  (SELECT count(*) FROM checkpoints c LEFT JOIN index_runs r USING (checkpoint_id)
   WHERE r.run_id IS NULL
      OR r.n_vectors <> (SELECT count(*) FROM vectors v WHERE v.checkpoint_id = c.checkpoint_id)
      OR r.n_projections <> (SELECT count(*) FROM vector_tokens p JOIN vectors v USING (vector_id)
                             WHERE v.checkpoint_id = c.checkpoint_id)) AS incomplete,
  (SELECT count(*) FROM vectors WHERE checkpoint_id NOT IN (SELECT checkpoint_id FROM checkpoints)) AS orphans"""
failures, requests, during_job, seen = [], 0, 0, set()
with httpx.Client(base_url=url, timeout=30) as client:
    while not stop.exists():
        try:
            busy = client.get("/health").json()["jobs_running"] > 0
            hits = client.get("/promoters", params={"token": "paris", "checkpoint": "all", "limit": 200})
            models = client.get("/models")
            check = client.post("/sql", json={"sql": CONSISTENT})
            requests += 4
            during_job += 4 * busy
            for r in (hits, models, check):
                if r.status_code != 200:
                    failures.append(f"{r.request.url}: {r.status_code} {r.text[:200]}")
            if check.status_code == 200 and check.json()["rows"] != [[0, 0]]:
                failures.append(f"half-indexed state visible: {check.json()['rows']}")
            listed = {m["name"] for m in models.json()["items"]}
            for m in models.json()["items"]:
                if not m["checkpoints"] or any(c["n_vectors"] <= 0 for c in m["checkpoints"]):
                    failures.append(f"model {m['name']} listed without complete checkpoints")
            if seen - listed:
                failures.append(f"models disappeared: {seen - listed}")
            seen |= listed
            found = {h["model"] for h in hits.json()["items"]}
            if found - listed:  # searched first, listed after: a model found must already be listed
                failures.append(f"found in search before it was listed: {found - listed}")
        except Exception as err:
            failures.append(repr(err))
print(json.dumps({"failures": failures, "requests": requests, "during_job": during_job, "seen": sorted(seen)}))
'''


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readers_never_see_a_half_indexed_checkpoint(tmp_path: Path) -> None:
    from service_fixtures import build_store, tiny_gpt2

    db = build_store(tmp_path)
    big = tiny_gpt2(tmp_path / "big", vocab_size=4000, n_embd=128, n_layer=4, seed=1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--db", str(db), "--port", str(port),
                               "--allow-dir", str(tmp_path)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop = tmp_path / "stop"
    clients: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            assert server.poll() is None and time.monotonic() < deadline, "lensdb serve did not start"
            time.sleep(0.2)
        clients = [subprocess.Popen([sys.executable, "-c", CLIENT, url, str(stop)], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for _ in range(4)]
        time.sleep(1.0)  # let them start querying first
        with httpx.Client(base_url=url, timeout=30) as client:
            job = client.post("/index", json={"checkpoint": str(big), "name": "big"}).json()
            deadline = time.monotonic() + 120
            while (state := client.get(f"/jobs/{job['id']}").json())["status"] in ("queued", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert state["status"] == "done", state
            time.sleep(1.0)  # and keep querying the finished store a little
    finally:
        stop.touch()
        reports = []
        for c in clients:
            out = c.communicate(timeout=60)[0]
            reports.append(json.loads(out.strip().splitlines()[-1]) if c.returncode == 0 else {"failures": [out]})
        server.terminate()
        server.communicate(timeout=30)
    assert all(not r["failures"] for r in reports), [r["failures"][:3] for r in reports]
    assert all(r["requests"] > 0 for r in reports)
    assert sum(r["during_job"] for r in reports) > 0, "no request overlapped the index job"
    assert all("big" in r["seen"] for r in reports)
