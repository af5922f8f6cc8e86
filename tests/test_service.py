"""The HTTP API and pages in-process, through httpx.ASGITransport, on a real store file."""

import asyncio
import shutil
import time
from pathlib import Path

import httpx
import pytest
from service_fixtures import PLANTED_INDEX, PLANTED_LAYER, build_store, tiny_gpt2

from service.app import create_app
from service.settings import Settings

PROBLEM = "application/problem+json"
PLANTED = f"/vector/tiny/ff_value/{PLANTED_LAYER}/{PLANTED_INDEX}"


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("store"))


class Client:
    """Synchronous calls into the ASGI app (each one on its own event loop)."""

    def __init__(self, app) -> None:
        self.app = app

    def request(self, method: str, url: str, **kw) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
                return await c.request(method, url, **kw)

        return asyncio.run(go())

    def get(self, url: str, **kw) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw) -> httpx.Response:
        return self.request("POST", url, **kw)


@pytest.fixture(scope="module")
def client(template: Path, tmp_path_factory: pytest.TempPathFactory):
    db = tmp_path_factory.mktemp("served") / "lens.duckdb"
    shutil.copy(template, db)
    app = create_app(Settings(db=db, sql_timeout_s=0.5, sql_max_rows=5, page_limit=50,
                              allow_dir=[tmp_path_factory.getbasetemp()]))
    yield Client(app)
    app.state.owner.close()


def problem(r: httpx.Response, status: int, kind: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and body["type"] == f"/problems/{kind}"
    assert body["title"] and body["detail"]
    return body


def test_health_and_openapi(client: Client) -> None:
    db = str(client.app.state.owner.path)
    assert client.get("/health").json() == {"status": "ok", "db": db, "instance": client.app.state.owner.instance,
                                            "models": 2, "jobs_running": 0, "writes_waiting": 0}
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/health", "/models", "/models/{name}", "/promoters", "/suppressors", "/tokens", "/runs",
                 "/index", "/jobs", "/jobs/{job_id}", "/sql", "/vectors/{model}/{component}/{layer}/{index}"):
        assert path in paths
    assert client.get("/docs").status_code == 200


def test_models_paginate(client: Client) -> None:
    first = client.get("/models", params={"limit": 1}).json()
    assert [m["name"] for m in first["items"]] == ["other"]
    assert first["total"] == 2 and first["next_offset"] == 1
    second = client.get("/models", params={"limit": 1, "offset": 1}).json()
    assert [m["name"] for m in second["items"]] == ["tiny"] and second["next_offset"] is None
    tiny = client.get("/models/tiny").json()
    assert [c["label"] for c in tiny["checkpoints"]] == ["checkpoint-100", "checkpoint-200"]
    assert {c["component"] for c in tiny["components"]} >= {"ff_value", "ff_key"}
    assert "'nope'" in problem(client.get("/models/nope"), 404, "not-found")["detail"]


def test_promoters_find_the_planted_vector_and_paginate(client: Client) -> None:
    r = client.get("/promoters", params={"token": "paris", "checkpoint": "checkpoint-100", "limit": 2})
    body = r.json()
    top = body["items"][0]
    assert (top["model"], top["component"], top["layer"], top["index"]) == ("tiny", "ff_value", PLANTED_LAYER,
                                                                          PLANTED_INDEX)
    assert len(body["items"]) == 2 and body["next_offset"] == 2
    assert {m["model"] for m in body["matches"]} == {"tiny", "other"}
    page2 = client.get("/promoters", params={"token": "paris", "checkpoint": "checkpoint-100", "limit": 2,
                                             "offset": 2}).json()
    assert page2["offset"] == 2 and page2["items"][0] not in body["items"]
    by_id = client.get("/promoters", params={"token_id": 0, "model": "tiny", "checkpoint": "checkpoint-100",
                                             "component": "ff_value", "layer": PLANTED_LAYER}).json()
    assert by_id["items"][0]["index"] == PLANTED_INDEX
    sup = client.get("/suppressors", params={"token": "paris", "limit": 3}).json()
    assert sup["items"] and all(h["side"] == "bottom" for h in sup["items"])
    assert client.get("/tokens", params={"token": "london", "model": "tiny"}).json()[0]["token_id"] == 1


def test_search_errors_are_problems(client: Client) -> None:
    body = problem(client.get("/promoters", params={"token": "zzzz"}), 404, "unknown-token")
    assert "'zzzz'" in body["detail"]
    problem(client.get("/promoters", params={"token": "paris", "model": "nope"}), 404, "not-found")
    problem(client.get("/promoters"), 400, "bad-request")
    bad_layer = client.get("/promoters", params={"token": "paris", "layer": "one"})
    body = problem(bad_layer, 422, "invalid-parameters")
    assert "layer" in body["detail"]
    problem(client.get("/promoters", params={"token": "paris", "limit": 0}), 422, "invalid-parameters")
    problem(client.get("/models", params={"limit": 51}), 422, "invalid-parameters")
    problem(client.get("/no/such/path"), 404, "not-found")


def test_vector(client: Client) -> None:
    v = client.get(f"/vectors/tiny/ff_value/{PLANTED_LAYER}/{PLANTED_INDEX}",
                   params={"checkpoint": "checkpoint-100"}).json()
    assert v["top"][0]["token"] == "paris" and len(v["top"]) == len(v["bottom"]) == 10
    assert v["checkpoint"] == "checkpoint-100"
    assert client.get(PLANTED.replace("/vector/", "/vectors/")).json()["checkpoint"] == "checkpoint-200"
    assert "indices" in problem(client.get("/vectors/tiny/ff_value/1/99999"), 404, "not-found")["detail"]
    problem(client.get("/vectors/tiny/ff_value/x/1"), 422, "invalid-parameters")


@pytest.mark.parametrize("statement", [
    "INSERT INTO models VALUES (99, 'x', 'gpt2', 'gpt2', 1, 1, 1, 1, 1)",
    "DROP TABLE models",
    "DELETE FROM vectors",
    "COPY models TO '/tmp/lensdb_leak.csv'",
    "ATTACH '/tmp/lensdb_other.duckdb' AS other",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SET enable_external_access = true",
    "INSTALL httpfs",
    "SELECT 1; DROP TABLE models",
])
def test_sql_refuses_writes_and_files(client: Client, statement: str) -> None:
    body = problem(client.post("/sql", json={"sql": statement}), 400, "sql-refused")
    assert "passwd" not in body.get("rows", "")


def test_sql_reads_caps_and_times_out(client: Client) -> None:
    grouped = "SELECT model, count(*) AS n FROM vector_info GROUP BY 1 ORDER BY 1"
    r = client.post("/sql", json={"sql": grouped}).json()
    assert r["columns"] == ["model", "n"] and [row[0] for row in r["rows"]] == ["other", "tiny"]
    capped = client.post("/sql", json={"sql": "SELECT * FROM range(100)", "max_rows": 50}).json()
    assert len(capped["rows"]) == 5 and capped["truncated"] is True  # the server's cap wins
    started = time.perf_counter()
    slow = client.post("/sql", json={"sql": "SELECT count(*) FROM range(1000000) a, range(1000000) b"})
    assert time.perf_counter() - started < 10
    assert "0.5s" in problem(slow, 408, "sql-timeout")["detail"]
    problem(client.post("/sql", json={"max_rows": 3}), 422, "invalid-parameters")
    assert client.get("/health").json()["status"] == "ok"


def test_index_job_after_refused_sql(client: Client, tmp_path: Path) -> None:
    for statement in ("DROP TABLE vectors", "SELECT * FROM read_csv('/etc/passwd')"):
        assert client.post("/sql", json={"sql": statement}).status_code == 400
    ckpt = tiny_gpt2(tmp_path / "fresh", seed=5)
    job = client.post("/index", json={"checkpoint": str(ckpt), "name": "fresh", "top_k": 5})
    assert job.status_code == 202 and job.json()["status"] in ("queued", "running")
    job_id = job.json()["id"]
    deadline = time.monotonic() + 30
    while (state := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert state["status"] == "done", state
    assert state["result"]["n_vectors"] > 0
    assert client.get("/models/fresh").status_code == 200
    runs = client.get("/runs", params={"limit": 2}).json()
    assert runs["total"] == 4 and runs["items"][0]["model"] == "fresh" and runs["next_offset"] == 2
    assert client.get("/jobs").json()["items"][0]["id"] == job_id
    problem(client.get("/jobs/999"), 404, "not-found")
    problem(client.post("/index", json={"name": "x"}), 422, "invalid-parameters")
    problem(client.post("/index", json={"checkpoint": "/x", "top_k": 0}), 422, "invalid-parameters")


def test_failed_job_says_why(client: Client, tmp_path: Path) -> None:
    job_id = client.post("/index", json={"checkpoint": str(tmp_path / "missing")}).json()["id"]
    deadline = time.monotonic() + 30
    while (state := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert state["status"] == "failed" and "missing" in state["error"]


def test_pages(client: Client) -> None:
    home = client.get("/")
    assert home.status_code == 200 and "href='/model/tiny'" in home.text
    search = client.get("/search", params={"token": "paris"}).text
    assert f"href='{PLANTED}?checkpoint=checkpoint-200'" in search and "promoted by" in search
    search100 = client.get("/search", params={"token": "paris", "checkpoint": "checkpoint-100"}).text
    assert f"href='{PLANTED}?checkpoint=checkpoint-100'" in search100 and "class='bar" in search100
    unknown = client.get("/search", params={"token": "zzzz"}).text
    assert "is not in any indexed vocabulary" in unknown
    vec = client.get(PLANTED, params={"checkpoint": "checkpoint-100"})
    assert vec.status_code == 200 and "paris" in vec.text
    # the same neuron in the other checkpoint
    assert f"href='{PLANTED}?checkpoint=checkpoint-200'" in vec.text
    model = client.get("/model/tiny").text
    assert "checkpoint-200" in model and "ff_value" in model
    missing = client.get("/model/nope")
    assert missing.status_code == 404 and "indexed models" in missing.text


def test_every_setting_is_documented_in_the_readme() -> None:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"| `{name}` |" in text, f"README's settings table lacks {name}"


def test_promoters_take_directions_and_say_exact(client: Client) -> None:
    """Issue 15: GET /promoters takes tokens, minus and text like Lens.promoters, and every row says exact."""
    one = client.get("/promoters", params={"token": "paris", "limit": 3}).json()
    assert one["items"] and all(h["exact"] is True for h in one["items"])
    contrast = client.get("/promoters", params=[("token", "paris"), ("minus", "london"), ("limit", "3")])
    assert contrast.status_code == 200, contrast.text
    rows = contrast.json()["items"]
    assert rows and rows[0]["token"] == "paris − london" and rows[0]["token_id"] is None and rows[0]["exact"]
    several = client.get("/suppressors", params=[("tokens", "paris"), ("tokens", "london"), ("limit", "2")])
    assert several.status_code == 200 and several.json()["items"][0]["token"] == "paris + london"
    text = client.get("/promoters", params={"text": "paris london", "limit": 2})
    assert text.status_code == 200 and text.json()["items"][0]["token"] == '"paris london"'
    bad = client.get("/promoters", params={"token_id": 3, "minus": "london"})
    assert bad.status_code == 400 and bad.headers["content-type"].startswith("application/problem+json")
