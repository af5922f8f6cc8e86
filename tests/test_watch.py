"""Registered models and the watcher: a real transformers.Trainer run, half-written checkpoints, the local
Hugging Face cache layout, linked identical steps, restart safety and failures that stop nothing else."""

import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import duckdb
import pytest
import torch
from transformers import GPT2LMHeadModel, Trainer, TrainingArguments, default_data_collator

import queries
from indexer.watch.cycle import _Cycle, parse_every, register_source, watch_cycle, watch_loop
from indexer.watch.discover import Candidate, candidates, changed, detect_kind, fingerprint, incomplete
from schema.errors import LensdbError, StoreError
from schema.writer import session
from service.cli import main
from tests.tinymodels import WORDS, save_gpt2

OLD = time.time() - 600


def _age(folder: Path, when: float = OLD) -> None:
    """Make every file of a folder look written ``when`` (a finished checkpoint)."""
    for f in folder.rglob("*"):
        os.utime(f, (when, when), follow_symlinks=False)


def _train(base: Path, out: Path) -> None:
    """Fine-tune the tiny GPT-2 for 4 steps with the real Trainer, saving every 2 steps."""
    tiny = save_gpt2(base, seed=0)
    model = GPT2LMHeadModel.from_pretrained(base)
    texts = [" " + " ".join(WORDS[i:i + 4]) for i in range(0, 16, 2)]
    ids = [torch.tensor(tiny.tokenizer(t)["input_ids"]) for t in texts]
    assert len({len(x) for x in ids}) == 1
    data = [{"input_ids": x, "labels": x} for x in ids]
    args = TrainingArguments(output_dir=str(out), max_steps=4, save_steps=2, per_device_train_batch_size=2,
                             report_to=[], use_cpu=True, learning_rate=5e-3, logging_steps=100, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=data, processing_class=tiny.tokenizer,
            data_collator=default_data_collator).train()


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    out = root / "run"
    _train(root / "base", out)
    return out


def _by_label(report) -> dict[str, tuple[str, str | None]]:
    return {i.label: (i.action, i.reason) for i in report.items}


def test_trainer_run_is_indexed_step_by_step_and_half_written_folders_wait(trainer_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(trainer_run, run, symlinks=True)
    for name in ("checkpoint-2", "checkpoint-4"):
        assert (run / name / "trainer_state.json").exists() and (run / name / "tokenizer.json").exists()
        _age(run / name)
    # three copies of checkpoint-4 as a watcher may see them while Trainer writes
    for name in ("checkpoint-6", "checkpoint-8", "checkpoint-10"):
        shutil.copytree(run / "checkpoint-4", run / name)
        _age(run / name)
    weights = run / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _age(run / "checkpoint-6")
    (run / "checkpoint-8" / "config.json").unlink()
    os.utime(run / "checkpoint-10" / "model.safetensors")  # written just now

    db = tmp_path / "lens.duckdb"
    assert main(["register", "trained", str(run), "--top-k", "10", "--db", str(db)]) == 0
    first = watch_cycle(db, settle_s=30, look_gap_s=0.1)
    got = _by_label(first)
    assert got["checkpoint-2"][0] == got["checkpoint-4"][0] == "indexed"
    assert got["checkpoint-6"][0] == "skipped" and "truncated" in (got["checkpoint-6"][1] or "")
    assert got["checkpoint-8"][0] == "skipped" and "config.json missing" in (got["checkpoint-8"][1] or "")
    assert got["checkpoint-10"][0] == "skipped" and "modified" in (got["checkpoint-10"][1] or "")
    assert (first.status, first.n_indexed, first.n_skipped) == ("ok", 2, 3)

    with queries.connect(db) as lens:
        assert [(s.checkpoint, s.step) for s in lens.steps("trained")] == [("checkpoint-2", 2), ("checkpoint-4", 4)]
        runs = lens.watch_runs()
        assert runs[0].status == "ok" and {(i.label, i.action) for i in runs[0].items} >= {("checkpoint-6", "skipped")}
        assert lens.sql("SELECT count(*) FROM watch_items WHERE action = 'skipped'").rows == [[3]]

    second = watch_cycle(db, settle_s=30, look_gap_s=0.1)
    assert (second.n_indexed, second.n_linked, second.n_known) == (0, 0, 2)

    # checkpoint-10 settles: identical to checkpoint-4, so it is linked, not indexed again
    _age(run / "checkpoint-10")
    third = watch_cycle(db, settle_s=30, look_gap_s=0.1)
    assert _by_label(third)["checkpoint-10"] == ("linked", "identical content to trained/checkpoint-4; not re-indexed")
    with queries.connect(db) as lens:
        steps = lens.steps("trained")
        assert [(s.checkpoint, s.step, s.linked_to) for s in steps][-1] == ("checkpoint-10", 10, "trained/checkpoint-4")
        assert lens.sql("SELECT count(*) FROM checkpoints").rows == [[2]]
        assert lens.registered()[0].model_dump(include={"indexed", "linked", "kind"}) == {
            "indexed": 2, "linked": 1, "kind": "trainer"}


def _blob(cache: Path, data: bytes) -> Path:
    blob = cache / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    return blob


def _snapshot(cache: Path, sha: str, source: Path, refs: list[str]) -> None:
    """A snapshot folder whose files are relative symlinks into blobs/, as huggingface_hub lays them out."""
    snap = cache / "snapshots" / sha
    snap.mkdir(parents=True)
    for f in source.iterdir():
        blob = _blob(cache, f.read_bytes())
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    for ref in refs:
        (cache / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (cache / "refs" / ref).write_text(sha)


def test_hf_cache_snapshots_are_registered_and_identical_revisions_linked(tmp_path: Path, capsys) -> None:
    a = save_gpt2(tmp_path / "a", seed=0).path
    b = save_gpt2(tmp_path / "b", seed=1).path
    cache = tmp_path / "hub" / "models--org--tiny"
    _snapshot(cache, "1" * 40, a, ["step1000"])
    _snapshot(cache, "2" * 40, a, ["step2000"])  # bit-identical step (as Pythia publishes)
    _snapshot(cache, "3" * 40, b, ["main"])
    assert (cache / "snapshots" / ("1" * 40) / "model.safetensors").is_symlink()
    assert detect_kind(cache) == "hf_cache"
    assert [(c.label, c.step) for c in candidates(cache, "hf_cache")] == [
        ("step1000", 1000), ("step2000", 2000), ("main", None)]

    db = tmp_path / "lens.duckdb"
    assert main(["register", "tiny", str(cache), "--top-k", "5", "--db", str(db)]) == 0
    assert "hf_cache" in capsys.readouterr().out
    assert main(["watch", "--once", "--settle", "0", "--look-gap", "0", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "2 indexed, 1 linked" in out and "identical content to tiny/step1000" in out
    with queries.connect(db) as lens:
        assert [(s.checkpoint, s.step, s.linked_to) for s in lens.steps("tiny")] == [
            ("step1000", 1000, None), ("step2000", 2000, "tiny/step1000"), ("main", None, None)]
    assert main(["registered", "--db", str(db)]) == 0
    assert "hf_cache" in capsys.readouterr().out
    # registering the same name again is a no-op; for another folder, a clear error
    assert main(["register", "tiny", str(cache), "--db", str(db)]) == 0
    assert main(["register", "tiny", str(tmp_path / "a"), "--db", str(db)]) == 1
    assert "already registered" in capsys.readouterr().err


def test_a_failing_checkpoint_does_not_stop_the_others_and_a_crashed_cycle_is_marked(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for step, seed in ((1, 0), (2, 1)):
        save_gpt2(run / f"checkpoint-{step}", seed=seed)
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        _age(run / f"checkpoint-{step}")
    db = tmp_path / "lens.duckdb"
    register_source(db, "m", run, top_k=5)
    with session(db) as store:
        _Cycle(store)  # a process that died mid-cycle leaves its run 'running'

    from indexer import index_checkpoint

    def flaky(path: Path, opts):
        if path.name == "checkpoint-1":
            raise LensdbError("disk on fire")
        return index_checkpoint(db, path, opts)

    report = watch_cycle(db, settle_s=0, look_gap_s=0, index=flaky)
    assert _by_label(report) == {"checkpoint-1": ("failed", "disk on fire"),
                                 "checkpoint-2": ("indexed", _by_label(report)["checkpoint-2"][1])}
    assert report.status == "failed" and report.error == "m/checkpoint-1: disk on fire"
    with queries.connect(db) as lens:
        runs = lens.watch_runs()
        assert [r.status for r in runs] == ["failed", "interrupted"]
    again = watch_cycle(db, settle_s=0, look_gap_s=0)  # the next cycle re-discovers the failed one
    assert _by_label(again) == {"checkpoint-1": ("indexed", _by_label(again)["checkpoint-1"][1])}


def test_stability_rules(tmp_path: Path) -> None:
    ck = save_gpt2(tmp_path / "checkpoint-3", seed=0).path
    c = Candidate(ck, "checkpoint-3", 3)
    now = time.time()
    assert incomplete(c, "trainer", 0) == (
        "trainer_state.json missing (Trainer writes it last, so the checkpoint is still being written)")
    (ck / "trainer_state.json").write_text('{"global_step": 3}')
    assert incomplete(c, "trainer", 0) is None
    assert "modified" in (incomplete(c, "trainer", 60, now=now) or "")
    assert incomplete(c, "trainer", 60, now=now + 120) is None
    before = fingerprint(ck)
    with (ck / "model.safetensors").open("ab") as fh:
        fh.write(b"\0")
    assert "model.safetensors" in (changed(before, fingerprint(ck), 2) or "")
    (ck / "model.safetensors").rename(ck / "model-00001-of-00002.safetensors")
    assert "index.json not written yet" in (incomplete(c, "trainer", 0) or "")


def test_every_parsing_and_the_loop() -> None:
    assert [parse_every(t) for t in ("30s", "10m", "2h", "1d", "45")] == [30, 600, 7200, 86400, 45]
    with pytest.raises(LensdbError, match="10m"):
        parse_every("soon")
    calls: list[int] = []
    stop = threading.Event()

    def cycle():
        calls.append(1)
        if len(calls) == 3:
            stop.set()
        if len(calls) == 2:
            raise StoreError("locked")
        return None

    errors: list[str] = []
    watch_loop(cycle, 0.001, stop, on_error=lambda e: errors.append(str(e)))  # type: ignore[arg-type]
    assert len(calls) == 3 and errors == ["locked"]


def test_an_older_store_gains_the_new_tables_on_its_next_write(tmp_path: Path, capsys) -> None:
    db = tmp_path / "lens.duckdb"
    register_source(db, "x", save_gpt2(tmp_path / "m").path)
    con = duckdb.connect(str(db))
    for view in ("vector_drift", "checkpoint_steps"):
        con.execute(f"DROP VIEW {view}")
    for table in ("sources", "checkpoint_aliases", "watch_runs", "watch_items"):
        con.execute(f"DROP TABLE {table}")
    con.execute("UPDATE lensdb_meta SET value = '1' WHERE key = 'schema_version'")  # as that release wrote it
    con.close()
    with pytest.raises(StoreError, match="older lensdb .*lensdb upgrade"):
        queries.connect(db)
    register_source(db, "x", tmp_path / "m")
    with queries.connect(db) as lens:
        assert [s.name for s in lens.registered()] == ["x"]
