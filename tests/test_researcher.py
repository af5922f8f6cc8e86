"""The researcher at the keyboard (issue 18): a store with an uncased BERT, a lower-case GPT-2 and a cased GPT-2.

Each model resolves a typed word in its own vocabulary and a model without it is named; searches default to the
vectors that write into the stream; filters that name nothing say what exists; results become data frames.
"""

import math
import subprocess
import sys
from pathlib import Path

import pytest

import queries
from indexer import IndexOptions, index_checkpoint
from queries import HitFilter, TokenHit
from queries.frames import Rows, TokenHits
from schema.errors import InvalidFilter, LensdbError
from service.cli import main
from tests.tinymodels import TinyModel, save_gpt2

READERS = {"ff_key", "ff_gate", "attn_q", "attn_k", "attn_v", "attn_ov_svd_in", "attn_qk_svd_q", "attn_qk_svd_k"}
PAIRS = {"attn_ov_pair", "attn_qk_pair"}


@pytest.fixture(scope="module")
def cased(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return save_gpt2(tmp_path_factory.mktemp("ckpt") / "cased", seed=3, cased=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2: TinyModel, tiny_bert: TinyModel,
          cased: TinyModel) -> Path:
    db = tmp_path_factory.mktemp("researcher") / "lens.duckdb"
    index_checkpoint(db, tiny_bert.path, IndexOptions(name="bert", top_k=20))
    index_checkpoint(db, tiny_gpt2.path, IndexOptions(name="gpt2", top_k=20, head_maps=True, pair_vocab="all"))
    index_checkpoint(db, cased.path, IndexOptions(name="cased", top_k=20))
    return db


def _forms(hits: TokenHits) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m in hits.matches:
        out.setdefault(m.model, set()).add(m.form)
    return out


# ---- one word, each vocabulary its own way ------------------------------------------------------------------

def test_paris_is_answered_by_the_uncased_and_the_cased_models_alike(store: Path, tiny_bert: TinyModel,
                                                                     cased: TinyModel) -> None:
    with queries.connect(store) as lens:
        lower = lens.promoters("paris", limit=200)
        upper = lens.promoters("Paris", limit=200)
    for hits in (lower, upper):
        assert hits.missing == []
        planted = {(h.model, h.component, h.layer, h.index) for h in hits if h.rank == 1}
        assert {("bert", "ff_value", 1, 9), ("gpt2", "ff_value", 1, 7), ("cased", "ff_value", 1, 7)} <= planted
    assert _forms(lower) == {"bert": {"exact"}, "gpt2": {"exact"}, "cased": {"any-case"}}
    assert _forms(upper) == {"bert": {"any-case"}, "gpt2": {"any-case"}, "cased": {"exact"}}
    assert {m.token for m in lower.matches if m.model == "cased"} == {"ĠParis"}


def test_a_model_searched_alone_finds_the_word_in_another_case(store: Path) -> None:
    with queries.connect(store) as lens:
        hits = lens.promoters("paris", model="cased")
        assert [m.token for m in lens.tokens("paris", model="cased")] == ["ĠParis"]
    assert hits and hits[0].model == "cased" and hits[0].token == " Paris"


def test_a_model_without_the_token_is_named(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with queries.connect(store) as lens:
        found = lens.tokens("w12")
        hits = lens.promoters("w12", limit=5)
    assert [m.model for m in found] == ["bert"] and found.missing == ["cased", "gpt2"]
    assert hits.missing == ["cased", "gpt2"] and all(h.model == "bert" for h in hits)
    assert main(["promoters", "w12", "--db", str(store)]) == 0
    assert "no token for 'w12' in: cased, gpt2" in capsys.readouterr().err


def test_a_marked_spelling_finds_the_plain_word_where_nothing_else_matches(store: Path) -> None:
    with queries.connect(store) as lens:
        found = lens.tokens("ĠParis")
    assert _forms(found) == {"cased": {"exact"}, "gpt2": {"any-case"}, "bert": {"word"}}
    assert sorted(m.token for m in found if m.model == "bert") == ["##paris", "paris"]


def test_resolution_markers_match_the_indexers() -> None:
    """The word stored for each token and the word made of what a user types are one rule (schema.layout)."""
    from indexer.model import vocab
    from queries import resolve
    from schema.layout import lookup_word

    assert vocab.lookup_word is resolve.lookup_word is lookup_word
    expected = {"Ġparis": "paris", "▁Paris": "Paris", "##s": "s", " paris ": "paris", "##": "##", "Ġ": "Ġ",
                "paris": "paris"}
    assert {text: lookup_word(text) for text in expected} == expected


# ---- writers by default ----------------------------------------------------------------------------------

def test_promoters_default_to_vectors_that_write(store: Path) -> None:
    with queries.connect(store) as lens:
        default = lens.promoters("king", limit=1000)
        reads = lens.promoters("king", role="reads", limit=1000)
        every = lens.promoters("king", role="all", limit=1000)
        key = lens.promoters("king", component="ff_key", model="gpt2", limit=1000)
    assert default and not {h.component for h in default} & (READERS | PAIRS)
    assert reads and {h.component for h in reads} <= READERS
    assert ("gpt2", "ff_key", 1, 5) in {(h.model, h.component, h.layer, h.index) for h in reads if h.rank == 1}
    assert not {h.component for h in every} & PAIRS
    # exact search (issue 15): every role's top 1000 is the top 1000 of the writers' and the readers' answers
    key_of = lambda hits: {(h.model, h.checkpoint, h.component, h.layer, h.index) for h in hits}  # noqa: E731
    assert key_of(every) <= key_of(default) | key_of(reads)
    assert len(every) == min(1000, len(default) + len(reads))
    assert key and {h.component for h in key} == {"ff_key"}  # a named component wins over the default role


def test_head_pairs_only_when_asked_and_with_their_source_token(store: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    with queries.connect(store) as lens:
        target = lens.sql("SELECT p.token_id FROM head_pairs p JOIN vectors v USING (vector_id) WHERE "
                          "v.component = 'attn_ov_pair' AND p.side = 'top' ORDER BY p.zscore DESC LIMIT 1").rows[0][0]
        word = lens.tokens(target, model="gpt2")[0].token
        assert not {h.component for h in lens.promoters(target, model="gpt2", role="all", limit=10_000)} & PAIRS
        pairs = lens.promoters(target, model="gpt2", component="attn_ov_pair", limit=5)
    assert pairs and all(h.source_token for h in pairs)
    assert main(["promoters", word, "--model", "gpt2", "--component", "attn_ov_pair", "--limit", "3",
                 "--db", str(store)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert "source_token" in header and header.index("source_token") < header.index("token")


def test_a_role_that_excludes_the_named_component_says_so(store: Path) -> None:
    with queries.connect(store) as lens, pytest.raises(InvalidFilter, match="ff_value.*writes.*'reads'"):
        lens.promoters("paris", component="ff_value", role="reads")


# ---- typos say what exists -------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "says"), [
    ({"component": "ff_values"}, "no component 'ff_values'.*components: .*ff_value"),
    ({"layer": 9}, "layer 9 is out of range: layers run 0–1"),
    ({"head": 3, "component": "ff_value"}, "ff_value has no heads; head applies to .*attn_o"),
    ({"head": 9, "component": "attn_o"}, "head 9 is out of range: heads run 0–3 for attn_o"),
    ({"expert": 0}, "has no experts"),
])
def test_a_filter_that_names_nothing_lists_what_exists(store: Path, fields: dict, says: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with queries.connect(store) as lens:
        with pytest.raises(InvalidFilter, match=says):
            lens.promoters("paris", **fields)
        with pytest.raises(InvalidFilter, match=says):
            lens.suppressors("paris", **fields)
    argv = [x for k, v in fields.items() for x in (f"--{k}", str(v))]
    assert main(["promoters", "paris", *argv, "--db", str(store)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lensdb: error: ")


def test_a_bad_role_is_refused(store: Path) -> None:
    with queries.connect(store) as lens, pytest.raises(LensdbError, match="role"):
        lens.promoters("paris", role="writers")


# ---- data frames --------------------------------------------------------------------------------------------

def test_hits_round_trip_through_pandas_polars_and_arrow(store: Path) -> None:
    with queries.connect(store) as lens:
        hits = lens.promoters("paris", filter=HitFilter(limit=30))
    assert isinstance(hits, TokenHits) and len(hits) == 30
    frame = hits.df()
    assert list(frame.columns) == list(TokenHit.model_fields) and len(frame) == 30
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
               for r in frame.to_dict("records")]
    assert [TokenHit.model_validate(r) for r in records] == list(hits)
    assert [TokenHit.model_validate(r) for r in hits.pl().to_dicts()] == list(hits)
    assert [TokenHit.model_validate(r) for r in hits.arrow().to_pylist()] == list(hits)
    assert "<table>" in hits._repr_html_() and "paris" in hits._repr_html_()


def test_every_list_result_and_sql_and_a_vector_become_frames(store: Path) -> None:
    with queries.connect(store) as lens:
        models = lens.models()
        result = lens.sql("SELECT component, count(*) AS n FROM vectors GROUP BY 1 ORDER BY 1")
        view = lens.vector("gpt2", "ff_value", 1, 7)
        empty = lens.promoters("w12", model="bert", component="ff_value", layer=0, limit=1, offset=10_000)
    assert isinstance(models, Rows) and models.df()["name"].tolist() == [m.name for m in models]
    assert models.arrow().column("checkpoints").to_pylist()[0][0]["label"] == models[0].checkpoints[0].label
    sql = result.df()
    assert list(sql.columns) == ["component", "n"] and sql["n"].tolist() == [r[1] for r in result.rows]
    assert result.pl().columns == ["component", "n"] and "<table>" in result._repr_html_()
    tokens = view.df()
    assert tokens[tokens.side == "top"]["token"].iloc[0] == " paris"
    assert len(tokens) == len(view.top) + len(view.bottom)
    assert " paris" in view._repr_html_() and "norm" in view._repr_html_()
    assert list(empty.df().columns) == list(TokenHit.model_fields) and len(empty.df()) == 0


# ---- the command line --------------------------------------------------------------------------------------

def test_head_of_a_long_answer_ends_quietly(store: Path) -> None:
    lensdb = Path(sys.executable).with_name("lensdb")
    done = subprocess.run(f"{lensdb} sql 'SELECT * FROM range(200000)' --max-rows 200000 --db {store} | head -2",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert done.stdout.count("\n") == 2
    assert done.stderr == ""


# ---- over HTTP -----------------------------------------------------------------------------------------------

def test_the_api_names_missing_models_and_answers_typos_with_422(store: Path, tmp_path: Path) -> None:
    import shutil

    from service.app import create_app
    from service.settings import Settings
    from tests.test_service import Client, problem

    db = tmp_path / "lens.duckdb"
    shutil.copy(store, db)
    app = create_app(Settings(db=db, warm=False))
    client = Client(app)
    try:
        body = client.get("/promoters", params={"token": "w12", "limit": 3}).json()
        assert body["missing"] == ["cased", "gpt2"] and [m["model"] for m in body["matches"]] == ["bert"]
        forms = {m["model"]: m["form"] for m in client.get("/promoters", params={"token": "Paris"}).json()["matches"]}
        assert forms == {"bert": "any-case", "cased": "exact", "gpt2": "any-case"}
        typo = problem(client.get("/promoters", params={"token": "paris", "component": "ff_values"}), 422,
                       "invalid-filter")
        assert "ff_value" in typo["detail"]
        problem(client.get("/suppressors", params={"token": "paris", "layer": 9}), 422, "invalid-filter")
        assert client.get("/promoters", params={"token": "paris", "role": "writers"}).status_code == 422
        reads = client.get("/promoters", params={"token": "king", "role": "reads", "limit": 50}).json()["items"]
        assert reads and {h["component"] for h in reads} <= READERS
        page = client.get("/models/gpt2/vectors", params={"component": "ff_value", "order": "index", "limit": 3})
        assert [v["index"] for v in page.json()["items"]] == [0, 1, 2] and page.json()["total"] == 2 * 128
    finally:
        app.state.owner.close()
