"""Issue 22: hostile checkpoints and hostile command lines. Only regular files are opened (a FIFO never blocks
an index run), sizes in config.json are checked against the tensors before anything is built, headers are
capped, messages never quote a file's bytes, the tokenizer is part of a checkpoint's identity, duplicate token
ids are refused, and every bad flag, argument, prompt or full disk is one line. Tiny real checkpoints, real
store files, the CLI in-process (a subprocess where the process itself is limited)."""

import contextlib
import hashlib
import io
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from indexer import IndexOptions, index_checkpoint
from indexer.errors import CheckpointError
from indexer.index.memory import bound_heap_growth
from indexer.model.adapters import adapter_for
from indexer.model.checkpoint import open_checkpoint
from indexer.model.vocab import load_vocabulary
from service.cli import main
from tests.test_bad_input import snapshot
from tests.tinymodels import TinyModel

ROOT = Path(__file__).resolve().parents[1]


def cli(*argv: str) -> tuple[int, str, str]:
    """``lensdb ARGV`` in-process; usage errors exit 2 through argparse (SystemExit), the rest return."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit:
            code = int(exit.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def folder(tiny_gpt2: TinyModel, tmp_path: Path) -> Path:
    dest = tmp_path / "ckpt"
    shutil.copytree(tiny_gpt2.path, dest)
    return dest


def within(seconds: float, fn: Callable[[], object], unblock: Path | None = None) -> BaseException | None:
    """Run ``fn`` in a thread; what it raised, or a failure if it is still running after ``seconds`` (a FIFO it
    blocks on is then opened for writing, so the thread can end)."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as err:
            caught.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:
            with contextlib.suppress(OSError):
                os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"still blocked after {seconds}s")
    return caught[0] if caught else None


# ---- files that are not regular files ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors", "special_tokens_map.json"])
def test_a_fifo_in_the_checkpoint_is_refused_without_blocking(folder: Path, name: str) -> None:
    (folder / name).unlink(missing_ok=True)
    os.mkfifo(folder / name)
    err = within(10, lambda: load_vocabulary(folder, adapter_for(open_checkpoint(folder)).dims.vocab_size),
                 folder / name)
    assert isinstance(err, CheckpointError) and "not a regular file" in str(err), err


def test_a_device_as_weights_is_refused(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to("/dev/zero")
    err = within(10, lambda: open_checkpoint(folder))
    assert isinstance(err, CheckpointError) and "not a regular file" in str(err), err


def test_a_fifo_config_fails_the_cli_in_one_line(folder: Path, tmp_path: Path) -> None:
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    db = tmp_path / "lens.duckdb"
    done: list[tuple[int, str, str]] = []
    within(20, lambda: done.append(cli("index", str(folder), "--db", str(db), "--quiet")), folder / "config.json")
    code, _, err = done[0]
    assert code == 1 and err.count("\n") == 1 and "not a regular file" in err and not db.exists()


# ---- sizes that the tensors cannot have ---------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"n_layer": 10**9}, "says 1000000000 layers but the weights hold only"),
    ({"n_layer": 2**62}, "layers but the weights hold only"),
    ({"vocab_size": 10**12}, "vocab_size 1000000000000 is no dimension of any tensor"),
    ({"n_embd": 2**40, "n_head": 1}, "d_model 1099511627776 is no dimension"),
    ({"n_inner": 10**11}, "d_ff 100000000000 is no dimension"),
    ({"n_head": 10**6}, "heads"),
])
def test_config_sizes_are_checked_against_the_tensors_before_anything_is_built(folder: Path, changes: dict,
                                                                              message: str) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **changes}))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(CheckpointError, match=message):
            adapter_for(open_checkpoint(folder))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 5 and peak < 20 << 20, peak


def test_deeply_nested_config_is_one_clear_error(folder: Path) -> None:
    (folder / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        open_checkpoint(folder)


def test_a_safetensors_header_length_is_capped_and_never_echoed(folder: Path) -> None:
    f = folder / "model.safetensors"
    raw = f.read_bytes()
    claimed = 1_500_000_000
    f.write_bytes(struct.pack("<Q", claimed) + raw[8:])
    with pytest.raises(CheckpointError, match="beyond the 100000000-byte limit") as caught:
        open_checkpoint(folder)
    assert str(claimed) not in str(caught.value)


def test_a_symlinked_shard_never_leaks_its_target(folder: Path, tmp_path: Path) -> None:
    """The first 8 bytes of any file read as a header length: the message must not give them back."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"hunter2!" + b"the rest of a secret file" * 10)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(secret)
    with pytest.raises(CheckpointError) as caught:
        open_checkpoint(folder)
    text = str(caught.value)
    assert str(struct.unpack("<Q", b"hunter2!")[0]) not in text and "hunter2" not in text and "secret" not in text[
        text.index(":"):], text


# ---- identity and vocabulary ---------------------------------------------------------------------------------


def test_duplicate_token_ids_are_refused(folder: Path) -> None:
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    first, second = list(vocab)[5:7]
    vocab[second] = vocab[first]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(CheckpointError, match=f"token id {vocab[first]} is given to both"):
        load_vocabulary(folder, adapter_for(open_checkpoint(folder)).dims.vocab_size)


def test_the_content_hash_covers_the_tokenizer(folder: Path, tmp_path: Path) -> None:
    """A fixed tokenizer.json is a new checkpoint, not "already indexed"."""
    db = tmp_path / "lens.duckdb"
    first = index_checkpoint(db, folder, IndexOptions(name="m", top_k=5, device="cpu"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):  # respell one token
        if (folder / name).exists():
            (folder / name).write_text((folder / name).read_text().replace("<|endoftext|>", "<|eos|>"))
    second = index_checkpoint(db, folder, IndexOptions(name="m2", top_k=5, device="cpu"))
    assert second.status == "indexed" and second.content_hash != first.content_hash
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM tokens WHERE token = '<|eos|>'").fetchone() == (1,)
    con.close()


def test_a_store_hashed_without_the_tokenizer_still_knows_its_checkpoints(folder: Path, tmp_path: Path) -> None:
    db = tmp_path / "lens.duckdb"
    first = index_checkpoint(db, folder, IndexOptions(name="m", top_k=5, device="cpu"))
    new, legacy = open_checkpoint(folder).content_hashes()
    assert first.content_hash == new != legacy
    h = hashlib.sha256((folder / "config.json").read_bytes())
    h.update(b"model.safetensors" + (folder / "model.safetensors").read_bytes())
    assert h.hexdigest() == legacy  # what lensdb recorded before the tokenizer files counted
    con = duckdb.connect(str(db))
    con.execute("UPDATE checkpoints SET content_hash = ?", [legacy])
    con.close()
    again = index_checkpoint(db, folder, IndexOptions(name="m", top_k=5, device="cpu"))
    assert again.status == "unchanged"
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT content_hash FROM checkpoints").fetchall() == [(new,)]
    con.close()


@pytest.mark.skipif(not hasattr(resource, "RUSAGE_THREAD"), reason="per-thread page faults: Linux only")
def test_the_content_hash_reads_large_files_through_one_small_buffer(folder: Path) -> None:
    """Under an index run's fixed mmap threshold every read buffer above it is a fresh mapping, a page fault per
    4 KiB: hashing a 64 MiB file in 16 MiB reads faulted ~16 k times (and hashed from memory, not cache)."""
    extra = os.urandom(1 << 20) * 64  # a large tokenizer extra: hashed like the weights
    (folder / "merges.txt").write_bytes(extra)
    bound_heap_growth()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    new, _ = open_checkpoint(folder).content_hashes()
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
    h = hashlib.sha256((folder / "config.json").read_bytes())
    h.update(b"model.safetensors" + (folder / "model.safetensors").read_bytes())
    for name in ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                 "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "merges.txt"):
        if (folder / name).is_file():
            h.update(b"\x00tokenizer file\x00" + name.encode() + b"\x00" + (folder / name).read_bytes())
    assert new == h.hexdigest()
    assert faults < 2_000, faults


# ---- the command line: one line for every bad value ----------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["sql", "SELECT 1", "--max-rows", "1e20"], "expected a whole number"),
    (["sql", "SELECT 1", "--max-rows", "100000000000000000000"], "out of range"),
    (["sql", "SELECT 1", "--max-rows", "-3"], "out of range"),
    (["sql", "SELECT 1", "--timeout", "inf"], "out of range"),
    (["sql", "SELECT 1", "--timeout", "nan"], "out of range"),
    (["sql", "SELECT 1", "--timeout", "-1"], "out of range"),
    (["sql", "SELECT 1", "--max-bytes", "0"], "out of range"),
    (["promoters", "paris", "--limit", "-5"], None),
    (["vector", "gpt2-tiny", "ff_value", "1_0", "7"], "expected a whole number"),
    (["vector", "gpt2-tiny", "ff_value", "1", "7", "--limit", "-1"], "out of range"),
    (["drift", "gpt2-tiny", "ff_value", "1", "7", "--k", "-1"], "out of range"),
    (["changed", "gpt2-tiny", "a", "b", "--limit", "-1"], "out of range"),
    (["head-map", "paris", "--per-head", "0"], "out of range"),
    (["index", "x", "--top-k", "0"], "out of range"),
    (["watch", "--look-gap", "nan", "--once"], "out of range"),
    (["trace", "gpt2-tiny", "x", "--boost-value", "inf"], "not a usable number"),
    (["serve", "--port", "99999"], "port"),
    (["serve", "--sql-timeout-s", "inf"], "sql_timeout_s"),
    (["index", "x", "--server", "http://127.0.0.1:9", "--executor", "ray"], "the service decides"),
])
def test_absurd_numbers_are_one_line(store_copy: Path, argv: list[str], message: str | None) -> None:
    code, out, err = cli(*argv, "--db", str(store_copy)) if argv[0] != "serve" else cli(*argv)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code in (1, 2) and len(lines) == 1 and "Traceback" not in err, err
    assert message is None or message in lines[0], err


def test_an_argument_that_is_not_utf8_is_one_line(store_copy: Path) -> None:
    code, _, err = cli("promoters", "par\udcffis", "--db", str(store_copy))
    assert code == 2 and err.count("\n") == 1 and "not valid UTF-8" in err


def test_a_prompt_longer_than_the_model_reads_is_one_line(store_copy: Path) -> None:
    before = snapshot(store_copy)
    code, _, err = cli("trace", "gpt2-tiny", " ".join(["paris"] * 5000), "--db", str(store_copy))
    assert code == 1 and err.count("\n") == 1 and "reads at most" in err, err
    assert snapshot(store_copy) == before


def test_a_full_disk_is_one_line(folder: Path, tmp_path: Path) -> None:
    """The index run cannot grow its files past 64 KiB (RLIMIT_FSIZE, as a full disk would stop it): one line,
    no traceback, and no file left behind."""
    db = tmp_path / "lens.duckdb"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    done = subprocess.run([sys.executable, "-m", "service.cli", "index", str(folder), "--db", str(db), "--quiet",
                           "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.startswith("lensdb: error: ") and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert not db.exists()
