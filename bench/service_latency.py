"""Search latency of `lensdb serve` under load, measured from a second process.

Starts `lensdb serve` as a subprocess (on --db, or on a generated store of tiny GPT-2 checkpoints plus one
4000-token, 6-layer model), then runs --concurrency client threads in this process that search for a token
for --seconds, and prints p50/p90/p99 latency and throughput.

    python bench/service_latency.py [--db lens.duckdb --token paris] [--seconds 10] [--concurrency 8]
"""

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def generated_store(root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from service_fixtures import build_store, tiny_gpt2

    from indexer import IndexOptions, index_checkpoint

    db = build_store(root)
    big = tiny_gpt2(root / "big", vocab_size=4000, n_embd=128, n_layer=6, seed=1)
    index_checkpoint(db, big, IndexOptions(name="big"))
    return db


def start_server(db: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "service.cli", "serve", "--db", str(db), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("lensdb serve did not start")


def load(url: str, token: str, seconds: float, concurrency: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        nonlocal errors
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = client.get("/promoters", params={"token": token, "limit": 20})
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    errors += r.status_code != 200

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", type=Path, help="store to serve (default: generate a small one)")
    p.add_argument("--token", default="paris", help="token to search for (default paris)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to load the server (default 10)")
    p.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or generated_store(Path(tmp))
        proc, url = start_server(db)
        try:
            load(url, args.token, 1.0, 1)  # warm-up
            lat, errors = load(url, args.token, args.seconds, args.concurrency)
        finally:
            proc.terminate()
            proc.wait(30)
    ms = sorted(x * 1000 for x in lat)
    q = statistics.quantiles(ms, n=100)
    print(f"GET /promoters?token={args.token}&limit=20, {args.concurrency} concurrent clients, "
          f"{args.seconds:g}s")
    print(f"requests {len(ms)}  errors {errors}  throughput {len(ms) / args.seconds:.0f} req/s")
    print(f"latency ms: p50 {q[49]:.1f}  p90 {q[89]:.1f}  p99 {q[98]:.1f}  max {ms[-1]:.1f}")


if __name__ == "__main__":
    main()
