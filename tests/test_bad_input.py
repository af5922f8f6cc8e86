"""Bad input gets one clear line, a non-zero exit, and leaves the store exactly as it was."""

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from safetensors.torch import load_file, save_file

from service.cli import main
from tests.tinymodels import TinyModel


def snapshot(db: Path) -> str:
    """A digest of every row of every table: equal digests mean an unchanged store.

    ``run_attempts`` is left out: it is the log of attempts, written on its own around the run's one
    transaction (a run that fails mid-way leaves its 'failed' row there and nothing else), and so is its id
    counter; ``attempts`` reads it.
    """
    con = duckdb.connect(str(db), read_only=True)
    h = hashlib.sha256()
    for (table,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE table_name <> 'run_attempts' "
                                "ORDER BY 1").fetchall():
        log = " WHERE table_name <> 'run_attempts'" if table == "id_counters" else ""
        for row in con.execute(f"SELECT * FROM {table}{log} ORDER BY ALL").fetchall():
            h.update(repr(row).encode())
    con.close()
    return h.hexdigest()


def attempts(db: Path) -> list[tuple]:
    """(status, error) of every index attempt logged in the store, oldest first."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT status, error FROM run_attempts ORDER BY attempt_id").fetchall()
    finally:
        con.close()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def broken_copy(tiny: TinyModel, dest: Path) -> Path:
    shutil.copytree(tiny.path, dest)
    return dest


def _nan_in_layer_1(path: Path) -> None:
    tensors = load_file(path / "model.safetensors")
    tensors["transformer.h.1.mlp.c_proj.weight"][2, 3] = float("nan")
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def _truncate(path: Path) -> None:
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])


def _lying_header(path: Path) -> None:
    f = path / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["transformer.wte.weight"]["shape"][0] += 1
    new = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(new) == n
    f.write_bytes(raw[:8] + new + raw[8 + n :])


def _config(path: Path, **changes: object) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _empty_folder(path: Path) -> None:
    shutil.rmtree(path)
    path.mkdir()


def _folder_loop(path: Path) -> None:
    shutil.rmtree(path)
    path.symlink_to(path)


def _weights_loop(path: Path) -> None:
    f = path / "model.safetensors"
    f.unlink()
    f.symlink_to(f)


def _header_not_json(path: Path) -> None:
    f = path / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    f.write_bytes(raw[:8] + b"\x00not json" + b" " * (n - 9) + raw[8 + n :])


def _missing_shard(path: Path) -> None:
    raw = (path / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    names = [k for k in json.loads(raw[8 : 8 + n]) if k != "__metadata__"]
    (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in names}
    weight_map[names[-1]] = "model-00002-of-00002.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


CASES = {
    "no weights": (lambda p: (p / "model.safetensors").unlink(), "no model.safetensors"),
    "truncated safetensors": (_truncate, "truncated"),
    "header lies about shapes": (_lying_header, "does not match the data"),
    "NaN weights mid-run": (_nan_in_layer_1, "NaN or Inf"),
    "unsupported architecture": (lambda p: _config(p, model_type="mamba"), "not supported"),
    "config does not match tensors": (lambda p: _config(p, n_embd=48), "config does not match the weights"),
    "no tokenizer": (lambda p: [(p / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")],
                     "no tokenizer"),
    "config is not JSON": (lambda p: (p / "config.json").write_text("{nope"), "not valid JSON"),
    "empty folder": (_empty_folder, "broken: no config.json"),
    "folder is a symlink loop": (_folder_loop, "broken: symbolic link loop"),
    "weights symlink to themselves": (_weights_loop, "model.safetensors: symbolic link loop"),
    "safetensors header is not JSON": (_header_not_json, "model.safetensors: not a readable safetensors file "
                                       "(its header is not JSON)"),
    "shard index names a missing shard": (_missing_shard, "model-00002-of-00002.safetensors: shard named in "
                                          "model.safetensors.index.json is missing"),
    "config value of the wrong type": (lambda p: _config(p, n_layer="two"), "n_layer must be a positive integer"),
}
MID_RUN = {"NaN weights mid-run"}  # found while writing: the rows roll back, the attempt is logged 'failed'


@pytest.mark.parametrize("case", list(CASES))
def test_broken_checkpoint_is_refused_and_store_unchanged(
    case: str, tiny_gpt2: TinyModel, store_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damage, message = CASES[case]
    ckpt = broken_copy(tiny_gpt2, tmp_path / "broken")
    damage(ckpt)
    before, logged = snapshot(store_copy), attempts(store_copy)
    code, out, err = run_cli(capsys, "index", str(ckpt), "--db", str(store_copy), "--name", "broken", "--quiet",
                             "--replace")
    assert code == 1
    assert message in err and err.startswith("lensdb: error: ") and err.count("\n") == 1
    assert "Traceback" not in err
    assert snapshot(store_copy) == before
    if case in MID_RUN:
        assert attempts(store_copy)[len(logged):] == [("failed", err.removeprefix("lensdb: error: ").strip())]
    else:  # refused from the headers, before the store was opened: not even an attempt is logged
        assert attempts(store_copy) == logged


def test_failed_first_run_leaves_no_file(
    tiny_gpt2: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = broken_copy(tiny_gpt2, tmp_path / "broken")
    _nan_in_layer_1(ckpt)
    db = tmp_path / "new.duckdb"
    code, _, err = run_cli(capsys, "index", str(ckpt), "--db", str(db), "--quiet")
    assert code == 1 and "NaN" in err
    assert not db.exists() and not Path(str(db) + ".wal").exists()


def test_unsupported_architecture_names_nearest(tiny_gpt2: TinyModel, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = broken_copy(tiny_gpt2, tmp_path / "ckpt")
    _config(ckpt, model_type="gpt3")
    code, _, err = run_cli(capsys, "index", str(ckpt), "--db", str(tmp_path / "x.duckdb"), "--quiet")
    assert code == 1 and "nearest supported one is 'gpt2'" in err and "Supported: " in err


@pytest.mark.parametrize("argv, message", [
    (["index", "/no/such/folder"], "no such folder"),
    (["promoters", "zzqx"], "token 'zzqx' is not in any indexed vocabulary"),
    (["promoters", "paris", "--model", "nope"], "no model 'nope'"),
    (["vector", "gpt2-tiny", "ff_value", "9", "0"], "layers run 0–1"),
    (["vector", "gpt2-tiny", "attn_zz", "0", "0"], "has no component 'attn_zz'"),
    (["vector", "gpt2-tiny", "ff_value", "0", "0", "--checkpoint", "nope"], "no checkpoint 'nope'"),
    (["sql", "DELETE FROM models"], "only SELECT"),
    (["sql", "SELECT 1; DROP TABLE models"], "exactly one statement"),
    (["sql", "SELECT * FROM read_csv('/etc/passwd')"], "not allowed in read-only SQL"),
    (["sql", "ATTACH '/tmp/other.duckdb' AS o"], "only SELECT"),
    (["sql", "SELECT * FROM nosuchtable"], "nosuchtable"),
])
def test_bad_requests_fail_clearly(argv: list[str], message: str, store_copy: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(store_copy)
    code, _, err = run_cli(capsys, *argv, "--db", str(store_copy))
    assert code == 1, err
    assert message in err
    assert snapshot(store_copy) == before


def test_missing_store_says_how_to_create_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "models", "--db", str(tmp_path / "none.duckdb"))
    assert code == 1 and "lensdb index CHECKPOINT" in err
    assert not (tmp_path / "none.duckdb").exists()


def test_store_locked_by_another_writer(store_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(store_copy)!r}); "
         "print('ok', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        code, _, err = run_cli(capsys, "promoters", "paris", "--db", str(store_copy))
        assert code == 1 and "in use by another process" in err
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    time.sleep(0.1)
    assert run_cli(capsys, "promoters", "paris", "--db", str(store_copy))[0] == 0
