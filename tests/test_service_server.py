"""The real thing: `lensdb serve` in its own process on 127.0.0.1, over HTTP and in headless Chromium."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from service_fixtures import PLANTED_INDEX, PLANTED_LAYER, build_store, free_port, tiny_gpt2, wait_until_serving

from service.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("server")
    db = build_store(root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "service.cli", "serve", "--db", str(db), "--port", str(port), "--allow-dir", str(root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until_serving(proc, url, timeout_s=60)
    yield url, db, root
    proc.terminate()
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert not Path(f"{db}.server").exists()


def test_index_job_while_querying(server, capsys: pytest.CaptureFixture[str]) -> None:
    url, db, root = server
    # The service owns the file: a direct index says so and names the --server to use instead.
    ckpt = tiny_gpt2(root / "direct", seed=7)
    assert main(["index", str(ckpt), "--db", str(db), "--quiet"]) == 1
    assert f"--server {url}" in capsys.readouterr().err

    big = tiny_gpt2(root / "big", vocab_size=4000, n_embd=128, n_layer=6, seed=1)
    with httpx.Client(base_url=url, timeout=30) as client:
        job = client.post("/index", json={"checkpoint": str(big), "name": "big"})
        assert job.status_code == 202
        answered_while_running = 0
        deadline = time.monotonic() + 120
        while (state := client.get(f"/jobs/{job.json()['id']}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            hits = client.get("/promoters", params={"token": "paris", "model": "tiny", "limit": 1})
            assert hits.status_code == 200 and hits.json()["items"][0]["index"] == PLANTED_INDEX
            assert client.get("/health").json()["status"] == "ok"
            answered_while_running += state["status"] == "running"
        assert state["status"] == "done", state
        assert answered_while_running > 0
        assert "big" in [m["name"] for m in client.get("/models").json()["items"]]

    # `lensdb index --server` submits over HTTP and follows the job to the end.
    assert main(["index", str(ckpt), "--server", url, "--quiet", "--name", "viahttp"]) == 0
    assert "indexed viahttp/direct" in capsys.readouterr().out
    assert main(["index", str(root / "nowhere"), "--server", url, "--quiet"]) == 1
    assert "failed" in capsys.readouterr().err


def dump_dom(url: str, tmp_path: Path) -> str:
    assert CHROMIUM
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000", "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


NO_CHROMIUM = "chromium not found: apt-get install -y chromium (make test does)"


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_pages_in_chromium(server, tmp_path: Path) -> None:
    url, _, _ = server
    planted = f"/vector/tiny/ff_value/{PLANTED_LAYER}/{PLANTED_INDEX}"
    search = dump_dom(f"{url}/search?token=paris&model=tiny", tmp_path)
    assert "promoted by" in search
    assert f'href="{planted}?checkpoint=checkpoint-200"' in search
    vector = dump_dom(f"{url}{planted}?checkpoint=checkpoint-200", tmp_path)
    first = vector.split("<h2>promotes</h2>")[1]
    assert first.index("paris") < first.index("</table>")  # paris is among what it promotes
    assert f'href="{planted}?checkpoint=checkpoint-100"' in vector
