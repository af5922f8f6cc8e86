"""What `lensdb index` can be given besides a folder: hub ids resolved through the local Hugging Face cache only,
LoRA adapters over their base, GGUF files. Every refusal is one line and leaves the store as it was."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest

import queries
from service.cli import main
from tests.tinymodels import TinyModel, save_gpt2


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


# ---- LoRA / PEFT adapters -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyModel, Path, int]:
    """A LoRA adapter (written with peft) on a tiny GPT-2 whose update makes FF value 1.11 promote ' queen'."""
    import torch
    import transformers as tf
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("lora")
    tiny = save_gpt2(root / "base")
    queen = tiny.token_id("queen")
    model = tf.AutoModelForCausalLM.from_pretrained(root / "base")
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["c_proj"], fan_in_fan_out=True,
                                                  init_lora_weights=False))
    layer = peft_model.base_model.model.transformer.h[1].mlp.c_proj
    wte = tiny.state["transformer.wte.weight"]
    with torch.no_grad():  # ΔW = (4 / 2) · B·A; Conv1D stores [in, out]: B·A is [out, in], neuron 11 is column 11
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.zero_()
        layer.lora_A["default"].weight[0, 11] = 1.0
        layer.lora_B["default"].weight[:, 0] = wte[queen] * 20.0
    peft_model.save_pretrained(root / "adapter")
    return tiny, root / "adapter", queen


def test_a_lora_adapter_indexes_merged_and_as_its_update(lora: tuple[TinyModel, Path, int], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    tiny, adapter, queen = lora
    db = tmp_path / "lens.duckdb"
    assert main(["index", str(tiny.path), "--db", str(db), "--quiet", "--name", "gpt"]) == 0
    # merged: a second checkpoint of the base model, so `lensdb changed` compares them
    assert main(["index", str(adapter), "--db", str(db), "--quiet", "--name", "gpt"]) == 0
    assert main(["index", str(adapter), "--lora", "delta", "--db", str(db), "--quiet"]) == 0
    capsys.readouterr()
    with queries.connect(db) as lens:
        top = lens.vector("gpt", "ff_value", 1, 11, checkpoint="adapter")
        assert top.top[0].token_id == queen
        assert lens.vector("gpt", "ff_value", 1, 11, checkpoint="base").top[0].token_id != queen
        changed = lens.changed_most("gpt", "base", "adapter", component="ff_value", limit=1)
        assert (changed[0].layer, changed[0].index) == (1, 11)
        # delta: only the matrices the update changes (the other c_proj factors are zero), each neuron its update
        rows = lens.sql("SELECT component, layer, count(*) FROM vector_info WHERE model = 'adapter-delta' "
                        "GROUP BY ALL").rows
        assert [tuple(r) for r in rows] == [("ff_value", 1, 128)]
        (hit,) = lens.promoters("queen", model="adapter-delta", limit=1)
        assert (hit.component, hit.layer, hit.index) == ("ff_value", 1, 11)
        flags = lens.sql("SELECT basis_flags::JSON->>'$.source.lora' FROM index_runs ORDER BY run_id").rows
    assert [f[0] for f in flags] == [None, "merged", "delta"]
    assert main(["changed", "gpt", "base", "adapter", "--component", "ff_value", "--limit", "1", "--db", str(db)]) == 0
    assert "queen" in capsys.readouterr().out


@pytest.mark.parametrize(("change", "says"), [
    ({"peft_type": "IA3"}, "a PEFT IA3 adapter; lensdb reads LoRA adapters only"),
    ({"use_dora": True}, "DoRA"),
    ({"base_model_name_or_path": "nobody/nothing"}, "not in the Hugging Face cache"),
])
def test_adapters_lensdb_cannot_read_are_refused_clearly(lora: tuple[TinyModel, Path, int], tmp_path: Path,
                                                         change: dict, says: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import json

    _, adapter, _ = lora
    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, **change}))
    db = tmp_path / "lens.duckdb"
    assert main(["index", str(bad), "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
    assert not db.exists()


def test_an_adapter_on_another_base_is_refused(lora: tuple[TinyModel, Path, int], tiny_bert: TinyModel,
                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, adapter, _ = lora
    assert main(["index", str(adapter), "--base", str(tiny_bert.path), "--db", str(tmp_path / "x.duckdb")]) == 1
    assert "pass its base model with --base" in capsys.readouterr().err
