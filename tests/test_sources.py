"""What `lensdb index` can be given besides a folder: hub ids resolved through the local Hugging Face cache only,
LoRA adapters over their base, GGUF files. Every refusal is one line and leaves the store as it was."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest

import queries
from service.cli import main
from tests.tinymodels import TinyModel


def _cache_entry(cache: Path, repo_id: str, tiny: TinyModel, refs: dict[str, str]) -> dict[str, str]:
    """Lay ``tiny``'s files out as huggingface_hub does: blobs by hash, snapshots/<sha>/ of symlinks, refs/."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    shas = {}
    for ref, tag in refs.items():
        sha = hashlib.sha1(f"{repo_id}@{tag}".encode()).hexdigest()
        snap = folder / "snapshots" / sha
        snap.mkdir(parents=True)
        for f in tiny.path.iterdir():
            blob = folder / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                shutil.copy(f, blob)
            (snap / f.name).symlink_to(os.path.relpath(blob, snap))
        (folder / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(sha)
        shas[ref] = sha
    return shas


@pytest.fixture
def hub_cache(tmp_path: Path, tiny_gpt2: TinyModel, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return _cache_entry(cache, "tiny-org/Tiny-GPT2", tiny_gpt2, {"main": "main", "step100": "s100"})


def test_a_hub_id_is_read_from_the_local_cache(hub_cache: dict[str, str], tmp_path: Path,
                                               tiny_gpt2: TinyModel, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "lens.duckdb"
    assert main(["index", "tiny-org/Tiny-GPT2", "--db", str(db), "--quiet", "--top-k", "5"]) == 0
    assert "indexed tiny-gpt2/main" in capsys.readouterr().out
    with queries.connect(db) as lens:
        (hit,) = lens.promoters("paris", component="ff_value", limit=1)
        assert (hit.model, hit.layer, hit.index) == ("tiny-gpt2", *next(iter(tiny_gpt2.planted.promotes)))
        flags = lens.sql("SELECT basis_flags::JSON->'source' FROM index_runs").rows[0][0]
    assert "tiny-org/Tiny-GPT2" in flags and hub_cache["main"] in flags


def test_a_cached_revision_and_its_step(hub_cache: dict[str, str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "lens.duckdb"
    assert main(["index", "tiny-org/Tiny-GPT2", "--revision", "step100", "--db", str(db), "--quiet"]) == 0
    assert main(["index", "tiny-org/Tiny-GPT2", "--revision", hub_cache["main"][:10], "--db", str(db), "--quiet",
                 "--name", "other"]) == 0
    with queries.connect(db) as lens:
        steps = {(c.label, c.step) for m in lens.models() for c in m.checkpoints}
    # the two snapshots hold the same files: the second is the same content, already indexed
    assert steps == {("step100", 100)}
    assert "already indexed" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "says"), [
    (["not-cached/model"], "is not in the Hugging Face cache at .*hf download not-cached/model"),
    (["tiny-org/Tiny-GPT2", "--revision", "v9"], "revision 'v9' of 'tiny-org/Tiny-GPT2' is not in the Hugging Face "
     "cache .*cached revisions: main, step100.*hf download tiny-org/Tiny-GPT2 --revision v9"),
    (["./no/such/folder"], "neither an existing file or folder nor a Hugging Face model id"),
])
def test_what_is_not_cached_is_one_clear_line_and_no_store(hub_cache: dict[str, str], tmp_path: Path,
                                                           argv: list[str], says: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "lens.duckdb"
    assert main(["index", *argv, "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    import re

    assert re.search(says, err), err
    assert not db.exists()


def test_revision_goes_with_a_hub_id(tiny_gpt2: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", str(tiny_gpt2.path), "--revision", "main", "--db", str(tmp_path / "x.duckdb")]) == 1
    assert "--revision goes with a Hugging Face model id" in capsys.readouterr().err
