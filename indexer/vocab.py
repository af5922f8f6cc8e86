"""A checkpoint's vocabulary: every token id with its raw spelling, readable text and lookup word.

Users type plain words; models spell them ``Ġparis`` (byte-level BPE), ``▁paris`` (SentencePiece) or
``##paris`` (WordPiece continuation). ``word`` strips those markers so one lookup finds every variant.
"""

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import CheckpointError

_MARKERS = ("Ġ", "▁", "##")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")


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


def lookup_word(display: str) -> str:
    """The form a user would type: no surrounding space, no word-start or continuation marker."""
    word = display.strip()
    for marker in _MARKERS:
        if word.startswith(marker) and len(word) > len(marker):
            word = word[len(marker) :]
            break
    return word or display


def load_vocabulary(path: Path, size: int) -> Vocabulary:
    """Read the tokenizer saved beside the weights; ``size`` is the embedding's row count.

    Rows past the tokenizer's length (padded embeddings, as in Pythia) get placeholder names ``<id:N>``.
    """
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise CheckpointError(
            f"{path}: no tokenizer ({', '.join(TOKENIZER_FILES)}); lensdb needs it to name tokens. "
            "Save the tokenizer into the checkpoint folder (tokenizer.save_pretrained(folder))."
        )
    from transformers import AutoTokenizer

    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # transformers raises many types for a broken tokenizer folder
        raise CheckpointError(f"{path}: cannot load the tokenizer: {err}") from None
    backend = getattr(tok, "backend_tokenizer", None)
    kind = type(backend.model).__name__ if backend is not None else type(tok).__name__
    n = min(size, len(tok))
    raw = [str(t) for t in tok.convert_ids_to_tokens(list(range(n)))]
    decoder = backend.decoder if backend is not None else None
    if kind == "WordPiece" or decoder is None:
        display = list(raw)
    else:
        # a byte-level piece of a multi-byte character decodes to U+FFFD: its own spelling says more
        display = [d if "\ufffd" not in d else t for t, d in ((t, decoder.decode([t])) for t in raw)]
    extra = [f"<id:{i}>" for i in range(n, size)]
    tokens, display = raw + extra, display + extra
    return Vocabulary(kind=kind, tokens=tokens, display=display, words=[lookup_word(d) for d in display])
