"""A checkpoint's vocabulary: every token id with its raw spelling, readable text and lookup word.

Users type plain words; models spell them ``Ġparis`` (byte-level BPE), ``▁paris`` (SentencePiece) or
``##paris`` (WordPiece continuation). ``word`` strips those markers so one lookup finds every variant.
"""

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.errors import CheckpointError
from indexer.model.checkpoint import TOKENIZER_FILES, read_json
from schema.layout import lookup_word

MAX_TOKENIZER = 512 << 20  # bytes of tokenizer.json read at most


@dataclass(frozen=True)
class Vocabulary:
    kind: str
    tokens: list[str]
    display: list[str]
    words: list[str]

    @property
    def size(self) -> int:
        return len(self.tokens)

    def content_hash(self) -> str:
        return hashlib.sha256("\x00".join(self.tokens).encode()).hexdigest()


def load_vocabulary(path: Path, size: int) -> Vocabulary:
    """Read the tokenizer saved beside the weights; ``size`` is the embedding's row count.

    Rows past the tokenizer's length (padded embeddings, as in Pythia) get placeholder names ``<id:N>``.
    """
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise CheckpointError(
            f"{path}: no tokenizer ({', '.join(TOKENIZER_FILES)}); lensdb needs it to name tokens. "
            "Save the tokenizer into the checkpoint folder (tokenizer.save_pretrained(folder))."
        )
    return vocabulary_from(read_tokenizer_json(path, size) or read_with_transformers(path, size), size)


def vocabulary_from(read: "Tokens", size: int) -> Vocabulary:
    """The vocabulary of ``size`` ids from what a tokenizer reader returned."""
    kind, raw, decoder = read
    n = len(raw)
    if kind == "WordPiece" or decoder is None:
        display = list(raw)
    else:
        # a byte-level piece of a multi-byte character decodes to U+FFFD: its own spelling says more
        display = [d if "\ufffd" not in d else t for t, d in ((t, decoder.decode([t])) for t in raw)]
    extra = [f"<id:{i}>" for i in range(n, size)]
    tokens, display = raw + extra, display + extra
    return Vocabulary(kind=kind, tokens=tokens, display=display, words=[lookup_word(d) for d in display])


Tokens = tuple[str, list[str], Any]  # tokenizer model name, spellings of ids 0…n-1, decoder (or None)


def read_tokenizer_json(path: Path, size: int) -> Tokens | None:
    """``tokenizer.json`` read by the ``tokenizers`` library alone: what transformers' fast tokenizers wrap, without
    importing transformers (~0.5 s of every run). None where transformers would read it differently: no such
    file, one it cannot parse, or added tokens in ``tokenizer_config.json`` that the file does not hold."""
    file = path / "tokenizer.json"
    if not file.is_file():
        return None
    if file.stat().st_size > MAX_TOKENIZER:
        raise CheckpointError(f"{file}: larger than the {MAX_TOKENIZER >> 20} MiB lensdb reads for a tokenizer.")
    from tokenizers import Tokenizer

    config_file = path / "tokenizer_config.json"
    config = read_json(config_file) if config_file.is_file() else {}
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception:  # noqa: BLE001 — transformers then reads it, or says why it cannot
        return None
    added = config.get("added_tokens_decoder") or {} if isinstance(config, dict) else {}
    if not isinstance(added, dict) or any(
            not isinstance(v, dict) or tok.id_to_token(int(k)) != v.get("content") for k, v in added.items()):
        return None
    check_unique_ids(file, tok.get_vocab(with_added_tokens=True))
    n = min(size, tok.get_vocab_size(with_added_tokens=True))
    return type(tok.model).__name__, [_spelling(tok.id_to_token(i), i) for i in range(n)], tok.decoder


def check_unique_ids(where: Path, vocab: dict[str, int]) -> None:
    """One spelling per token id: a tokenizer that gives one id to two tokens would name vectors wrongly."""
    seen: dict[int, str] = {}
    for token, token_id in vocab.items():
        if token_id in seen and seen[token_id] != token:
            first, second = sorted((seen[token_id], token))
            raise CheckpointError(f"{where}: token id {token_id} is given to both {first!r} and {second!r}; "
                                  "each id must name one token. Fix the tokenizer's vocabulary.")
        seen[token_id] = token


def _spelling(token: str | None, token_id: int) -> str:
    """A token's spelling; an id the tokenizer leaves unnamed gets the placeholder padded rows get."""
    return f"<id:{token_id}>" if token is None else str(token)


def read_with_transformers(path: Path, size: int) -> Tokens:
    """Any tokenizer transformers can load (sentencepiece models, vocab files, …)."""
    from transformers import AutoTokenizer

    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # transformers raises many types for a broken tokenizer folder
        raise CheckpointError(f"{path}: cannot load the tokenizer: {err}") from None
    backend = getattr(tok, "backend_tokenizer", None)
    kind = type(backend.model).__name__ if backend is not None else type(tok).__name__
    # a tokenizer without a vocabulary map: its ids are its positions
    with contextlib.suppress(NotImplementedError, AttributeError, TypeError):
        check_unique_ids(path, dict(tok.get_vocab()))
    n = min(size, len(tok))
    raw = [_spelling(t, i) for i, t in enumerate(tok.convert_ids_to_tokens(list(range(n))))]
    return kind, raw, backend.decoder if backend is not None else None
