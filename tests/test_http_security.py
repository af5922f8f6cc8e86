"""Issue 22: the HTTP service holds under attack. In-process (httpx.ASGITransport) for breadth: requests do only
what the operator configured (compute settings, allowed folders), errors never carry a file's bytes, path
parameters are strict, every failure is a problem; the Host header, redirects and security headers. Then one
real `lensdb serve` on 127.0.0.1: bodies bounded by the bytes actually read (chunked with a lying
Content-Length), SQL and pages on bounded pools with 503 + Retry-After while /health keeps answering, hostile
SQL and checkpoints — and its peak RSS measured (VmHWM) through all of it.
"""

import asyncio
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from hostile_sql import BOUNDED, REFUSED
from service_fixtures import build_store, free_port, tiny_gpt2, wait_until_serving

from indexer.watch.cycle import register_source
from service.app import create_app
from service.guard import host_name, local_path
from service.pools import Busy, Pool
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(allowed folder holding a store and checkpoints, a folder outside it)."""
    root = tmp_path_factory.mktemp("allowed")
    build_store(root)
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_bytes(b"TOPSECRET " * 1000)
    tiny_gpt2(outside / "elsewhere", seed=3)
    return root, outside


def call(app, method: str, url: str | httpx.URL, host: str = "localhost", **kw) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}") as c:
            return await c.request(method, url, **kw)

    return asyncio.run(go())


@pytest.fixture
def app(place: tuple[Path, Path], tmp_path: Path):
    """Apps on copies of the store (one service per file), allowed to read the checkpoints' folder."""
    root, _ = place
    made = []

    def make(**kw: object):
        db = tmp_path / f"lens{len(made)}.duckdb"
        shutil.copy(root / "lens.duckdb", db)
        made.append(create_app(Settings(**{"db": db, "allow_dir": [root], "warm": False, **kw})))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for a in made:
        a.state.owner.close()


def problem(r: httpx.Response, status: int, kind: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["type"] == f"/problems/{kind}" and "\n" not in body["detail"] and len(body["detail"]) <= 2000
    return body


def wait_job(app, job_id: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (job := call(app, "GET", f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


# ---- requests do only what the operator configured ---------------------------------------------------------


@pytest.mark.parametrize("field, value", [("executor", "ray"), ("address", "10.0.0.1:6379"), ("ray_workers", 64),
                                          ("device", "cuda"), ("precision", "bf16"), ("chunk_mb", 100000)])
def test_index_requests_cannot_choose_where_or_how_to_compute(app, place, field: str, value: object) -> None:
    root, _ = place
    a = app()
    r = call(a, "POST", "/index", json={"checkpoint": str(root / "other"), field: value})
    assert "set by the server's operator" in problem(r, 422, "invalid-parameters")["detail"]
    assert call(a, "GET", "/jobs").json()["items"] == []


def test_the_server_settings_choose_the_compute(app, place) -> None:
    root, _ = place
    a = app(index_device="cpu")
    job = call(a, "POST", "/index", json={"checkpoint": str(root / "other"), "name": "other"}).json()
    assert job["options"]["device"] == "cpu" and job["options"]["executor"] == "local"
    assert job["options"]["address"] is None
    assert wait_job(a, job["id"])["status"] == "done"


def test_paths_outside_the_allowed_folders_are_refused(app, place, tmp_path: Path) -> None:
    root, outside = place
    a = app()
    ckpt = outside / "elsewhere"
    for path in (str(ckpt), "/etc", f"{root}/../{outside.name}/elsewhere", str(root.parent)):
        r = call(a, "POST", "/index", json={"checkpoint": path})
        assert "not inside a folder this service may read" in problem(r, 403, "path-not-allowed")["detail"]
    problem(call(a, "POST", "/index", json={"checkpoint": "relative/path"}), 400, "bad-request")
    # a link inside the allowed folder that leads out of it, and a checkpoint whose shard does
    (root / "link").unlink(missing_ok=True)
    (root / "link").symlink_to(ckpt)
    problem(call(a, "POST", "/index", json={"checkpoint": str(root / "link")}), 403, "path-not-allowed")
    leaky = root / "leaky"
    tiny_gpt2(leaky, seed=4)
    (leaky / "model.safetensors").unlink()
    (leaky / "model.safetensors").symlink_to(outside / "secret.txt")
    r = call(a, "POST", "/index", json={"checkpoint": str(leaky)})
    assert "links outside the folders" in problem(r, 403, "path-not-allowed")["detail"]
    # files for pair_vocab, and folders to register, follow the same rule
    r = call(a, "POST", "/index", json={"checkpoint": str(root / "other"), "head_maps": True,
                                        "pair_vocab": str(outside / "secret.txt")})
    problem(r, 403, "path-not-allowed")
    problem(call(a, "POST", "/sources", json={"name": "x", "path": str(ckpt)}), 403, "path-not-allowed")
    assert call(a, "GET", "/jobs").json()["items"] == []


def test_hub_ids_and_adapter_bases_are_held_to_the_same_folders(app, place, monkeypatch) -> None:
    """A hub id is allowed by where its cached snapshot lies; a LoRA adapter's base, given or named by its
    adapter_config.json, like any other path."""
    root, outside = place
    cache = outside / "hub"
    model = cache / "models--org--tiny"
    if not model.exists():
        shutil.copytree(outside / "elsewhere", model / "snapshots" / ("a" * 40))
        (model / "refs").mkdir()
        (model / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    a = app()
    problem(call(a, "POST", "/index", json={"checkpoint": "org/tiny"}), 403, "path-not-allowed")
    cached = app(allow_dir=[root, cache])
    r = call(cached, "POST", "/index", json={"checkpoint": "org/tiny", "name": "hub"})
    assert r.status_code == 202 and wait_job(cached, r.json()["id"])["status"] == "done", r.text
    adapter = root / "adapter"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2,
                                                            "base_model_name_or_path": str(outside / "elsewhere")}))
    problem(call(a, "POST", "/index", json={"checkpoint": str(adapter)}), 403, "path-not-allowed")
    problem(call(a, "POST", "/index", json={"checkpoint": str(adapter), "base": "org/tiny"}), 403, "path-not-allowed")
    problem(call(a, "POST", "/index", json={"checkpoint": str(adapter), "base": "relative/../x"}), 400, "bad-request")


def test_without_allowed_folders_only_registered_models_can_be_indexed(app, place) -> None:
    root, outside = place
    a = app(allow_dir=[])
    problem(call(a, "POST", "/index", json={"checkpoint": str(root / "tiny" / "checkpoint-100")}), 403,
            "path-not-allowed")
    register_source(a.state.owner.store, "tiny", root / "tiny")  # the operator's decision
    r = call(a, "POST", "/index", json={"checkpoint": str(root / "tiny" / "checkpoint-100")})
    assert r.status_code == 202, r.text
    assert wait_job(a, r.json()["id"])["status"] == "done"
    problem(call(a, "POST", "/sources", json={"name": "y", "path": str(outside)}), 403, "path-not-allowed")


def test_job_errors_never_carry_file_contents(app, place) -> None:
    """A binary file as pair_vocab once put every byte of it into the job's error (the exception's repr)."""
    root, _ = place
    a = app()
    binary = root / "binary.bin"
    binary.write_bytes(b"\xff\xfeSECRETBYTES" * 50_000)
    r = call(a, "POST", "/index", json={"checkpoint": str(root / "tiny" / "checkpoint-200"), "name": "hm",
                                        "head_maps": True, "pair_vocab": str(binary), "replace": True})
    job = wait_job(a, r.json()["id"])
    assert job["status"] == "failed" and "not UTF-8 text" in job["error"], job
    assert "SECRET" not in json.dumps(job) and len(job["error"]) <= 1000
    attempts = call(a, "POST", "/sql", json={"sql": "SELECT error FROM run_attempts"}).json()["rows"]
    assert not any("SECRET" in str(row) for row in attempts)


# ---- every failure is a problem --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/vectors/tiny/ff_value/1_0/7", "/vectors/tiny/ff_value/1/7_0",
                                  "/vectors/tiny/ff_value/+1/7", "/vectors/tiny/ff_value/1.0/7",
                                  "/vectors/tiny/ff_value/%201/7", "/vector/tiny/ff_value/1_0/7", "/jobs/1_0",
                                  "/promoters?token=paris&limit=1_0", "/promoters?token=paris&layer=0_1",
                                  "/models?limit=+5", "/drift/tiny/ff_value/1/7?k=1_0", "/traces/1_0",
                                  "/models?limit=-1",
                                  "/promoters?token=paris&offset=-1", "/alignments/1?limit=-1"])
def test_integer_parameters_are_strict(app, path: str) -> None:
    problem(call(app(), "GET", path), 422, "invalid-parameters")


def test_failures_are_problems_not_tracebacks(app, place) -> None:
    a = app()
    for depth in (900, 100_000):
        deep = b'{"checkpoint": "/x", "components": ' + b"[" * depth + b"]" * depth + b"}"
        r = call(a, "POST", "/index", content=deep, headers={"content-type": "application/json"})
        assert r.status_code in (400, 422) and r.headers["content-type"].startswith(PROBLEM), r.text[:300]
    lone = b'{"sql": "SELECT \'\\ud800\'"}'
    assert "not valid Unicode" in problem(call(a, "POST", "/sql", content=lone,
                                               headers={"content-type": "application/json"}), 400,
                                          "sql-refused")["detail"]
    lone_path = b'{"checkpoint": "/x/\\udcff"}'
    r = call(a, "POST", "/index", content=lone_path, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and r.headers["content-type"].startswith(PROBLEM)
    r = call(a, "POST", "/traces", json={"model": "tiny", "prompt": " ".join(["paris"] * 200)})
    assert "reads at most 16 positions" in problem(r, 400, "bad-request")["detail"]
    problem(call(a, "POST", "/traces", json={"model": "tiny", "prompt": "x" * 100_001}), 422, "invalid-parameters")
    problem(call(a, "POST", "/sql", json={"sql": "SELECT 1", "max_rows": 10**20}), 422, "invalid-parameters")
    problem(call(a, "POST", "/traces", json={"model": "tiny", "prompt": "paris", "boost_value": 1e300}), 422,
            "invalid-parameters")
    assert call(a, "GET", "/promoters?token=%ED%B3%BF").status_code == 404  # not UTF-8: read as U+FFFD
    assert call(a, "GET", "/health").status_code == 200


# ---- HTTP hygiene ---------------------------------------------------------------------------------------------


def test_the_host_header_is_checked(app) -> None:
    a = app()
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example"):
        problem(call(a, "GET", "/health", host=host), 400, "host-not-allowed")
    for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST."):
        assert call(a, "GET", "/health", host=host).status_code == 200, host
    named = app(allowed_host=["lens.example.org"])
    assert call(named, "GET", "/health", host="lens.example.org:443").status_code == 200
    assert (host_name("[::1]:80"), host_name("Example.COM.:8000"), host_name("::1")) == ("::1", "example.com", "::1")


def test_login_redirects_stay_on_this_server(app) -> None:
    a = app(token="T0KEN")
    for path, where in (("//evil.example/x", "/evil.example/x"), ("/\\evil.example", "/evil.example"),
                        ("/search", "/search"), ("/sp%C3%A4%C5%A5", "/sp%C3%A4%C5%A5")):
        raw = httpx.URL("http://localhost/").copy_with(raw_path=path.encode() + b"?access_token=T0KEN")
        r = call(a, "GET", raw)  # the path exactly as sent: a client would not normalise it
        assert r.status_code == 303 and r.headers["location"] == where, (path, r.headers)
    assert local_path("///a//b") == "/a//b" and local_path("\\\\x") == "/x"


def test_security_headers(app) -> None:
    a = app()
    page = call(a, "GET", "/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src 'sha256-" in csp
    for r in (page, call(a, "GET", "/health"), call(a, "GET", "/nope")):
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["referrer-policy"] == "no-referrer"


def test_a_full_pool_answers_503_with_retry_after(app) -> None:
    pool = Pool("test", workers=1, waiting=1)
    release = threading.Event()

    async def three() -> list[object]:
        return await asyncio.gather(*(pool.run(release.wait) for _ in range(3)), return_exceptions=True)

    threading.Timer(0.5, release.set).start()
    results = asyncio.run(three())
    assert sum(isinstance(r, Busy) for r in results) == 1 and results.count(True) == 2
    assert pool.taken == 0
    pool.close()
    a = app(sql_workers=1, sql_timeout_s=1.0)
    slow = {"sql": "SELECT count(*) FROM range(1000000000000)"}

    async def many() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://localhost") as c:
            return list(await asyncio.gather(*(c.post("/sql", json=slow) for _ in range(4))))

    answers = asyncio.run(many())
    busy = [r for r in answers if r.status_code == 503]
    assert len(busy) == 2 and all(r.headers["retry-after"] == "1" for r in busy)
    assert problem(busy[0], 503, "busy")
    assert sorted(r.status_code for r in answers) == [408, 408, 503, 503]


# ---- one real server, its memory measured ---------------------------------------------------------------------


def rss_mib(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def raw_request(port: int, head: bytes, body_chunks, timeout: float = 30) -> bytes:
    """Send ``head`` and then the chunks (stopping when the server closes), and return what it answered. The
    answer is read while sending: a server that closes with the body unread may reset the connection, which
    would drop an answer read only afterwards."""
    answer = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        def read() -> None:
            with contextlib.suppress(OSError):
                while data := s.recv(65536):
                    answer.extend(data)
                    if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):  # a whole problem response
                        return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        s.sendall(head)
        with contextlib.suppress(OSError):
            for chunk in body_chunks:
                if answer:
                    break
                s.sendall(chunk)
        reader.join(timeout)
    return bytes(answer)


def chunked(total: int, size: int = 1 << 20):
    piece = b"x" * size
    for _ in range(total // size):
        yield f"{size:x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


@pytest.fixture(scope="module")
def server(place: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    root, _ = place
    work = tmp_path_factory.mktemp("served")
    db = build_store(work)
    port = free_port()
    cmd = [sys.executable, "-m", "service.cli", "serve", "--db", str(db), "--port", str(port), "--allow-dir",
           str(work), "--sql-timeout-s", "2", "--sql-max-bytes", "1000000", "--sql-rss-budget-mb", "256",
           "--sql-workers", "2", "--page-workers", "2", "--warm", "false", "--index-device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(proc, url)
    yield url, port, proc, work
    proc.terminate()
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]


def test_a_real_server_holds_under_attack_within_its_memory(server) -> None:
    url, port, proc, work = server
    client = httpx.Client(base_url=url, timeout=60)
    client.get("/models")
    start = rss_mib(proc.pid, "VmRSS")
    phases: dict[str, float] = {}

    # bodies: counted as read, whatever Content-Length says (chunked with a lying length, and plain chunked)
    for lie in (b"Content-Length: 20\r\n", b""):
        head = (b"POST /sql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + lie
                + b"Transfer-Encoding: chunked\r\n\r\n")
        started = time.monotonic()
        answer = raw_request(port, head, chunked(100 << 20))
        assert answer.startswith(b"HTTP/1.1 413") and b"1048576 bytes" in answer, answer[:300]
        assert time.monotonic() - started < 30
    phases["bodies"] = rss_mib(proc.pid)
    # Host: a rebinding page's name is refused
    assert client.get("/health", headers={"Host": "evil.example"}).status_code == 400

    # hostile SQL: a sample of every class, and the bounded ones
    for cls, stmts in REFUSED.items():
        for stmt in stmts[::10]:
            r = client.post("/sql", content=json.dumps({"sql": stmt}), headers={"content-type": "application/json"})
            assert r.status_code == 400 and r.json()["type"] == "/problems/sql-refused", (cls, stmt[:80], r.text)
    phases["hostile SQL"] = rss_mib(proc.pid)
    for stmt, stop in BOUNDED:
        r = client.post("/sql", json={"sql": stmt, "max_rows": 1_000_000})
        assert r.status_code in ((200,) if stop == "bytes" else (400, 408)), (stmt[:80], r.text[:300])
        assert len(r.content) <= 1_000_200
    phases["bounded SQL"] = rss_mib(proc.pid)

    # hostile checkpoints inside the allowed folder: absurd sizes, a lying header, a FIFO; the runner goes on
    absurd = tiny_gpt2(work / "absurd", seed=5)
    cfg = json.loads((absurd / "config.json").read_text())
    (absurd / "config.json").write_text(json.dumps({**cfg, "n_layer": 10**9}))
    header = tiny_gpt2(work / "header", seed=6)
    raw = (header / "model.safetensors").read_bytes()
    (header / "model.safetensors").write_bytes(struct.pack("<Q", 1_500_000_000) + raw[8:])
    fifo = tiny_gpt2(work / "fifo", seed=7)
    (fifo / "config.json").unlink()
    os.mkfifo(fifo / "config.json")
    good = tiny_gpt2(work / "good", seed=8)
    jobs = [client.post("/index", json={"checkpoint": str(p), "name": p.name}).json()["id"]
            for p in (absurd, header, fifo, good)]
    deadline = time.monotonic() + 120
    while (states := [client.get(f"/jobs/{j}").json() for j in jobs])[-1]["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, states
        time.sleep(0.1)
    assert [s["status"] for s in states] == ["failed", "failed", "failed", "done"], states
    assert "layers but the weights hold only" in states[0]["error"] and "1500000000" not in states[1]["error"]
    assert "not a regular file" in states[2]["error"]
    phases["hostile checkpoints"] = rss_mib(proc.pid)

    # back-pressure: ten slow queries at once; two run, two wait, the rest get 503 + Retry-After (each holds its
    # worker for the 2 s limit); /health stays quick
    slow = {"sql": "SELECT count(*) FROM range(1000000000000)"}
    answers: list[httpx.Response] = []

    def one() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            answers.append(c.post("/sql", json=slow))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert client.get("/health").status_code == 200
    health_s = time.monotonic() - started
    page = client.get("/")
    for t in threads:
        t.join(60)
    codes = sorted(r.status_code for r in answers)
    assert codes.count(503) >= 4 and set(codes) <= {408, 503}, codes
    assert all(r.headers.get("retry-after") for r in answers if r.status_code == 503)
    assert health_s < 2.0, health_s  # was 7.5 s when slow SQL shared the request threads
    assert page.status_code == 200 and "frame-ancestors 'none'" in page.headers["content-security-policy"]

    assert client.get("/health").json()["status"] == "ok"
    peak = rss_mib(proc.pid)
    phases["slow SQL at once"] = peak
    print(f"\nlensdb serve RSS: {start:.0f} MiB after start, peak {peak:.0f} MiB through the attack "
          f"(+{peak - start:.0f} MiB); /health answered in {health_s * 1000:.0f} ms with the SQL pool full; "
          "peak after each phase: " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()))
    # what the limits allow: the two memory-bound queries, one after the other, each up to its 256 MiB budget
    # over the RSS it started at (freed memory goes back to the system lazily), and 1 MiB bodies
    assert peak - start < 700, (start, peak)
    client.close()
