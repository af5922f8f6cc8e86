"""Dictionaries as first-class vectors: SAE latents, transcoders and direction sets, indexed against a tiny model
and searched by token like its neurons. Each format's folder is written as its own tool writes it
(tests/dictionary_files.py), with a latent whose decoder row is a token's unembedding direction planted in it."""

import json
import shutil
from pathlib import Path

import duckdb
import pytest
import torch

import queries
from indexer import IndexOptions, index_checkpoint
from indexer.index.dictionary_run import index_dictionary
from indexer.index.options import DictionaryOptions
from indexer.model.adapters import adapter_for
from indexer.model.checkpoint import open_checkpoint
from service.cli import main
from tests import dictionary_files as files
from tests.test_bad_input import snapshot
from tests.tinymodels import TinyModel, save_bert, save_gpt2

D = 32  # the tiny models' width
N = 24  # latents per test dictionary
PLANT_DEC, PLANT_ENC = 5, 9


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return save_gpt2(tmp_path_factory.mktemp("ckpt") / "tiny-gpt2")


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory, gpt2: TinyModel) -> Path:
    db = tmp_path_factory.mktemp("store") / "lens.duckdb"
    index_checkpoint(db, gpt2.path, IndexOptions(name="gpt2-tiny", device="cpu"))
    return db


@pytest.fixture
def db(base_store: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "lens.duckdb"
    shutil.copy(base_store, dest)
    return dest


def planted(gpt2: TinyModel, seed: int = 1, d_in: int = D, d_out: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder rows [N, d_in], decoder rows [N, d_out]): small random rows, decoder row 5 along ' paris' and
    encoder row 9 along ' king', made long."""
    g = torch.Generator().manual_seed(seed)
    enc, dec = torch.randn(N, d_in, generator=g) * 0.1, torch.randn(N, d_out, generator=g) * 0.1
    wte = gpt2.state["transformer.wte.weight"]
    dec[PLANT_DEC] = wte[gpt2.token_id("paris")] * 8.0
    enc[PLANT_ENC] = wte[gpt2.token_id("king")] * 8.0
    return enc, dec


def run(db: Path, path: Path, **kw: object):  # type: ignore[no-untyped-def]
    return index_dictionary(db, path, DictionaryOptions(model="gpt2-tiny", device="cpu", **kw))  # type: ignore[arg-type]


def first(db: Path, word: str, component: str, side: str = "top", **kw: object) -> queries.TokenHit:
    with queries.connect(db) as lens:
        hits = (lens.promoters if side == "top" else lens.suppressors)(word, component=component, limit=3, **kw)
    assert hits, f"no {component} hit for {word}"
    return hits[0]


@pytest.mark.parametrize("architecture", ["standard", "gated", "jumprelu", "topk"])
def test_saelens_latents_are_found_by_the_token_they_promote_and_read(db: Path, gpt2: TinyModel, tmp_path: Path,
                                                                      architecture: str) -> None:
    enc, dec = planted(gpt2)
    folder = files.saelens(tmp_path / f"sae-{architecture}", enc.T, dec, "blocks.1.hook_resid_post",
                           architecture=architecture)
    result = run(db, folder, name="res1")
    assert result.status == "indexed" and result.n_latents == N and result.n_vectors == 2 * N
    hit = first(db, "paris", "sae_dec")
    assert (hit.model, hit.layer, hit.index, hit.dictionary) == ("gpt2-tiny", 1, PLANT_DEC, "res1")
    hit = first(db, "king", "sae_enc")
    assert (hit.layer, hit.index, hit.dictionary) == (1, PLANT_ENC, "res1")
    with queries.connect(db) as lens:
        page = lens.vector("gpt2-tiny", "sae_dec", 1, PLANT_DEC, dictionary="res1")
        assert page.dictionary == "res1" and page.top[0].token == " paris"
        # one question across neurons and latents: the planted FF value and the planted latent both answer
        found = {(h.component, h.index) for h in lens.promoters("paris", limit=5)}
        assert {("ff_value", 7), ("sae_dec", PLANT_DEC)} <= found


def test_folders_written_by_saelens_itself_are_read(db: Path, gpt2: TinyModel, tmp_path: Path) -> None:
    """The real ``SAE.save_model`` of each architecture and of a transcoder (the sae-lens package)."""
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.transcoder import Transcoder, TranscoderConfig

    enc, dec = planted(gpt2)
    kinds = [(sae_lens.StandardSAE, sae_lens.StandardSAEConfig), (sae_lens.GatedSAE, sae_lens.GatedSAEConfig),
             (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig), (sae_lens.TopKSAE, sae_lens.TopKSAEConfig)]
    for cls, config in kinds:
        meta = SAEMetadata(model_name="gpt2", hook_name="blocks.1.hook_resid_post")
        sae = cls(config(d_in=D, d_sae=N, metadata=meta))
        with torch.no_grad():
            sae.W_enc.copy_(enc.T)
            sae.W_dec.copy_(dec)
        sae.save_model(tmp_path / cls.__name__)
        result = run(db, tmp_path / cls.__name__, name=cls.__name__)
        assert result.status == "indexed"
        assert first(db, "paris", "sae_dec", dictionary=cls.__name__).index == PLANT_DEC
        assert first(db, "king", "sae_enc", dictionary=cls.__name__).index == PLANT_ENC
    tc = Transcoder(TranscoderConfig(d_in=D, d_sae=N, d_out=D, apply_b_dec_to_input=False, metadata=SAEMetadata(
        model_name="gpt2", hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out")))
    with torch.no_grad():
        tc.W_enc.copy_(enc.T)
        tc.W_dec.copy_(dec)
    tc.save_model(tmp_path / "transcoder")
    run(db, tmp_path / "transcoder", name="tc")
    assert first(db, "paris", "sae_dec", dictionary="tc").index == PLANT_DEC


def test_a_transcoder_reads_at_its_input_hook_and_writes_at_its_output_hook(db: Path, gpt2: TinyModel,
                                                                            tmp_path: Path) -> None:
    enc, dec = planted(gpt2)
    folder = files.saelens(tmp_path / "tc", enc.T, dec, "blocks.0.ln2.hook_normalized", architecture="transcoder",
                           hook_out="blocks.0.hook_mlp_out")
    run(db, folder, name="tc0")
    assert first(db, "paris", "sae_dec").index == PLANT_DEC
    assert first(db, "king", "sae_enc").index == PLANT_ENC
    con = duckdb.connect(str(db), read_only=True)
    kind, hook_in, hook_out = con.execute("SELECT kind, hook_in, hook_out FROM dictionaries").fetchone()  # type: ignore[misc]
    con.close()
    assert (kind, hook_in, hook_out) == ("transcoder", "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out")


def test_sparsify_hookpoint_folders_and_transcoders(db: Path, gpt2: TinyModel, tmp_path: Path) -> None:
    enc, dec = planted(gpt2)
    run(db, files.sparsify(tmp_path / "sparsify-run", "h.1", enc, dec), name="sp-h1")
    assert (first(db, "paris", "sae_dec").layer, first(db, "paris", "sae_dec").index) == (1, PLANT_DEC)
    run(db, files.sparsify(tmp_path / "sparsify-tc", "h.0.mlp", enc, dec, transcode=True), name="sp-tc")
    hit = first(db, "king", "sae_enc", dictionary="sp-tc")
    assert (hit.layer, hit.index) == (0, PLANT_ENC)


def test_gemma_scope_params_with_the_hook_from_the_release_path(db: Path, gpt2: TinyModel, tmp_path: Path) -> None:
    enc, dec = planted(gpt2)
    params = files.gemmascope(tmp_path, "res", 1, enc.T.contiguous(), dec)
    result = run(db, params)
    assert result.dictionary == "layer_1/width_24/average_l0_5"
    hit = first(db, "paris", "sae_dec")
    assert (hit.layer, hit.index) == (1, PLANT_DEC)


def test_a_dictionary_run_commits_straight_into_the_file(db: Path, gpt2: TinyModel, tmp_path: Path) -> None:
    """Like an index run, a dictionary run's commit checkpoints its latents into the file rather than logging
    them first (``schema.writer.commit_into_file``)."""
    from schema.writer import Store

    enc, dec = planted(gpt2)
    wal = Path(f"{db}.wal")
    con = duckdb.connect(str(db))
    try:
        index_dictionary(Store(db, con), files.saelens(tmp_path / "sae", enc.T, dec, "blocks.0.hook_resid_pre"),
                         DictionaryOptions(model="gpt2-tiny", device="cpu"))
        assert (wal.stat().st_size if wal.exists() else 0) == 0
        assert con.execute("SELECT count(*) FROM dictionary_latents").fetchall() == [(2 * N,)]  # encoder, decoder
    finally:
        con.close()


def test_a_plain_direction_set_with_labels(db: Path, gpt2: TinyModel, tmp_path: Path) -> None:
    enc, dec = planted(gpt2)
    labels = [f"direction {i}" for i in range(N)]
    run(db, files.directions(tmp_path / "steer", dec, "blocks.0.hook_resid_pre", "writes", labels))
    hit = first(db, "paris", "dir_write")  # the catalog of this store is now cached in this process
    run(db, files.directions(tmp_path / "probes", enc, "blocks.1.hook_resid_mid", "reads"))  # it must see this one
    assert (hit.layer, hit.index, hit.dictionary) == (0, PLANT_DEC, "steer")
    assert first(db, "king", "dir_read").index == PLANT_ENC
    with queries.connect(db) as lens:
        page = lens.vector("gpt2-tiny", "dir_write", 0, PLANT_DEC, dictionary="steer")
        assert page.label == f"direction {PLANT_DEC}" and page.top[0].token == " paris"
        rows = lens.sql("SELECT dictionary, label FROM dictionary_latents WHERE idx = 5 ORDER BY dictionary").rows
        assert [tuple(r) for r in rows] == [("probes", None), ("steer", "direction 5")]


def test_a_latent_at_a_hook_is_read_exactly_like_that_sites_own_writers(tmp_path: Path) -> None:
    """Post-LN BERT: a decoder row at blocks.1.hook_mlp_out equal to FF value i of layer 1 gets FF value i's
    tokens and scores (the same per-layer carried basis), and a row at attn.hook_z equal to a unit vector of head
    h's z gets that head's attn_o row (carried through W_O)."""
    bert = save_bert(tmp_path / "tiny-bert")
    db = tmp_path / "lens.duckdb"
    index_checkpoint(db, bert.path, IndexOptions(name="bert-tiny", device="cpu"))
    adapter = adapter_for(open_checkpoint(bert.path))
    values = adapter.component("ff_value", 1)[0].vectors[:N]
    folder = files.saelens(tmp_path / "mlp-out", values.T.contiguous(), values, "blocks.1.hook_mlp_out",
                           model="bert-tiny")
    index_dictionary(db, folder, DictionaryOptions(model="bert-tiny", device="cpu"))
    width = adapter.dims.n_heads * adapter.dims.head_size
    z = torch.zeros(3, width)
    head_size = adapter.dims.head_size
    for i, (head, row) in enumerate([(0, 0), (1, 3), (2, 1)]):
        z[i, head * head_size + row] = 1.0
    hz = files.saelens(tmp_path / "hook-z", z.T.contiguous(), z, "blocks.1.attn.hook_z", model="bert-tiny")
    index_dictionary(db, hz, DictionaryOptions(model="bert-tiny", device="cpu", name="z"))
    with queries.connect(db) as lens:
        for i in (0, 3, 11):
            latent, value = lens.vector("bert-tiny", "sae_dec", 1, i, dictionary="mlp-out"), \
                lens.vector("bert-tiny", "ff_value", 1, i)
            assert [t.token_id for t in latent.top] == [t.token_id for t in value.top]
            assert latent.top[0].score == pytest.approx(value.top[0].score, rel=1e-4)
            assert latent.logit_std == pytest.approx(value.logit_std, rel=1e-4)
        for i, (head, row) in enumerate([(0, 0), (1, 3), (2, 1)]):
            latent, o = lens.vector("bert-tiny", "sae_dec", 1, i, dictionary="z"), \
                lens.vector("bert-tiny", "attn_o", 1, row, head=head)
            assert [t.token_id for t in latent.top] == [t.token_id for t in o.top]
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM vectors WHERE component = 'sae_enc' AND dictionary_id = "
                       "(SELECT dictionary_id FROM dictionaries WHERE name = 'z')").fetchone() == (0,)
    con.close()


def test_same_content_is_a_no_op_replace_re_indexes_and_forget_takes_the_latents(db: Path, gpt2: TinyModel,
                                                                                 tmp_path: Path) -> None:
    enc, dec = planted(gpt2)
    folder = files.saelens(tmp_path / "sae", enc.T, dec, "blocks.1.hook_resid_post")
    run(db, folder, name="res1")
    before = snapshot(db)
    assert run(db, folder, name="res1").status == "unchanged"
    assert snapshot(db) == before
    again = run(db, folder, name="res1", replace=True)
    assert again.status == "indexed"
    con = duckdb.connect(str(db), read_only=True)
    counts = con.execute("SELECT (SELECT count(*) FROM dictionaries), (SELECT count(*) FROM vectors WHERE "
                         "dictionary_id IS NOT NULL), (SELECT count(*) FROM vector_units WHERE dictionary_id IS NOT "
                         "NULL)").fetchone()
    con.close()
    assert counts == (1, 2 * N, 2)
    with queries.connect(db) as lens:
        assert lens.check().problems == []
    run(db, files.saelens(tmp_path / "other", enc.T, dec, "blocks.0.hook_resid_pre"), name="other")
    assert main(["forget", "gpt2-tiny", "--dictionary", "res1", "--db", str(db)]) == 0
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT name FROM dictionaries").fetchall() == [("other",)]
    assert con.execute("SELECT count(*) FROM vectors WHERE dictionary_id IS NOT NULL").fetchone() == (2 * N,)
    con.close()
    with queries.connect(db) as lens:
        assert lens.check().problems == []
        assert lens.vector("gpt2-tiny", "ff_value", 1, 7).top[0].token == " paris"  # the model's own rows stay
    code = main(["forget", "gpt2-tiny", "--db", str(db)])
    assert code == 0
    con = duckdb.connect(str(db), read_only=True)
    left = con.execute("SELECT (SELECT count(*) FROM dictionaries), (SELECT count(*) FROM vectors), "
                       "(SELECT count(*) FROM vector_tokens)").fetchone()
    con.close()
    assert left == (0, 0, 0)


def test_check_finds_latents_whose_dictionary_is_gone(db: Path, gpt2: TinyModel, tmp_path: Path) -> None:
    enc, dec = planted(gpt2)
    run(db, files.saelens(tmp_path / "sae", enc.T, dec, "blocks.1.hook_resid_post"), name="res1")
    con = duckdb.connect(str(db))
    con.execute("DELETE FROM dictionaries")
    con.close()
    with queries.connect(db) as lens:
        problems = " ".join(lens.check().problems)
    assert "dictionar" in problems


BAD = {
    "unknown hook": (lambda enc, dec, p: files.saelens(p, enc.T, dec, "blocks.7.hook_resid_post"),
                     "layer 7 does not exist"),
    "not a hook": (lambda enc, dec, p: files.saelens(p, enc.T, dec, "blocks.1.hook_nonsense"),
                   "is not a hook point"),
    "width": (lambda enc, dec, p: files.saelens(p, enc[:, :16].T, dec[:, :16], "blocks.1.hook_resid_post"),
              "16 wide but hook blocks.1.hook_resid_post of this model is 32 wide"),
    "shape mismatch": (lambda enc, dec, p: _rewrite_cfg(files.saelens(p, enc.T, dec, "blocks.1.hook_resid_post"),
                                                        d_sae=N + 1), "has shape [32, 24] but the config implies"),
    "missing W_dec": (lambda enc, dec, p: _drop(files.saelens(p, enc.T, dec, "blocks.1.hook_resid_post"), "W_dec"),
                      "tensor 'W_dec' is missing"),
    "NaN": (lambda enc, dec, p: files.saelens(p, enc.T, _nan(dec), "blocks.1.hook_resid_post"),
            "holds NaN or Inf values"),
    "no hook": (lambda enc, dec, p: files.gemmascope(p, "unknown", 1, enc.T.contiguous(), dec),
                "names no hook point; pass --hook"),
    "not a dictionary": (lambda enc, dec, p: (p.mkdir(), p)[1], "no dictionary found"),
}


def _rewrite_cfg(folder: Path, **changes: object) -> Path:
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def _drop(folder: Path, name: str) -> Path:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "sae_weights.safetensors")
    del state[name]
    save_file(state, folder / "sae_weights.safetensors")
    return folder


def _nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[3, 2] = float("nan")
    return t


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_dictionaries_are_one_clear_line_and_leave_the_store_unchanged(
        db: Path, gpt2: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    make, expected = BAD[case]
    enc, dec = planted(gpt2)
    path = make(enc, dec, tmp_path / "bad")
    before = snapshot(db)
    code = main(["index-dictionary", str(path), "--model", "gpt2-tiny", "--db", str(db), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("lensdb: error: ") and expected in err, err
    assert snapshot(db) == before


def test_lensdb_index_pointed_at_a_dictionary_names_index_dictionary(
        db: Path, gpt2: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enc, dec = planted(gpt2)
    folder = files.saelens(tmp_path / "sae", enc.T, dec, "blocks.1.hook_resid_post")
    before = snapshot(db)
    assert main(["index", str(folder), "--db", str(db), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a saelens dictionary" in err and "lensdb index-dictionary" in err, err
    assert snapshot(db) == before


def test_the_cli_indexes_and_pages_a_latent(db: Path, gpt2: TinyModel, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    enc, dec = planted(gpt2)
    folder = files.saelens(tmp_path / "sae", enc.T, dec, "blocks.1.hook_resid_post")
    assert main(["index-dictionary", str(folder), "--model", "gpt2-tiny", "--db", str(db), "--quiet"]) == 0
    assert "indexed dictionary sae" in capsys.readouterr().out
    assert main(["promoters", "paris", "--component", "sae_dec", "--db", str(db), "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert (hits[0]["index"], hits[0]["dictionary"]) == (PLANT_DEC, "sae")
    assert main(["vector", "gpt2-tiny", "sae_dec", "1", str(PLANT_DEC), "--dictionary", "sae", "--db", str(db)]) == 0
    assert "paris" in capsys.readouterr().out


def test_two_saes_of_one_model_align_latent_by_latent(db: Path, gpt2: TinyModel, tmp_path: Path) -> None:
    """B holds A's decoder rows permuted, a few negated, with 1 % noise: every latent of A finds its copy; a
    random dictionary does not."""
    from indexer.analyses.align_dictionaries import align_dictionaries

    enc, dec = planted(gpt2)
    g = torch.Generator().manual_seed(7)
    perm = torch.randperm(N, generator=g)
    sign = torch.ones(N)
    sign[::5] = -1
    dec_b = dec[perm] * sign[:, None] + 0.01 * torch.randn(N, D, generator=g) * dec.norm(dim=1).mean()
    run(db, files.saelens(tmp_path / "a", enc.T, dec, "blocks.1.hook_resid_post"), name="a")
    run(db, files.saelens(tmp_path / "b", enc.T, dec_b, "blocks.1.hook_resid_post"), name="b")
    run(db, files.saelens(tmp_path / "r", enc.T, torch.randn(N, D, generator=g), "blocks.1.hook_resid_post"), name="r")
    same = align_dictionaries(db, "gpt2-tiny", "a", "b")
    other = align_dictionaries(db, "gpt2-tiny", "a", "r")
    with queries.connect(db) as lens:
        run_ab = lens.alignment(same.alignment_id)
        assert (run_ab.info.dictionary_a, run_ab.info.dictionary_b, run_ab.info.unit) == ("a", "b", "latent")
        found = {m.index_a: (m.index_b, m.score) for m in run_ab.matches}
        inverse = {int(perm[j]): j for j in range(N)}
        assert all(found[i][0] == inverse[i] for i in range(N))
        assert all((found[i][1] < 0) == (sign[inverse[i]] < 0) for i in range(N))
        assert run_ab.info.mean_matched > 0.99 > lens.alignment(other.alignment_id).info.mean_matched + 0.2
