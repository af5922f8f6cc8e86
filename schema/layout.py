"""Facts about the store that readers need without the table declarations (which import SQLAlchemy): the
schema version this lensdb reads and writes, which tables are kept sorted by token, and the word a token is
looked up by."""

# Raised with every change to the tables or views; ``schema.migrations`` upgrades older stores step by step.
SCHEMA_VERSION = 8

# Token lookups skip row groups of these tables by their min/max token_id (see ``schema.tables``).
SORTED_BY_TOKEN = ("vector_tokens", "head_pairs")

# Word-start and continuation markers of BPE, SentencePiece and WordPiece vocabularies.
MARKERS = ("Ġ", "▁", "##")


def lookup_word(text: str) -> str:
    """The form a user would type: no surrounding space, no word-start or continuation marker. The indexer stores
    it for every token (``token_forms.lookup``); a lookup applies it to what was typed."""
    word = text.strip()
    for marker in MARKERS:
        if word.startswith(marker) and len(word) > len(marker):
            word = word[len(marker):]
            break
    return word or text
