"""Which token a typed word names in each model's own vocabulary.

Models disagree on case and spelling: an uncased encoder has ``paris``, a cased GPT-2 ``Ġparis`` and
``ĠParis``, a Llama ``▁Paris``. So a word is resolved per vocabulary, in order, stopping at the first form
that matches *in that model*:

1. ``exact``: the lookup word, raw spelling or display text equals the typed text;
2. ``any-case``: the same, ignoring case;
3. ``word``: the typed text without surrounding space or a word-start/continuation marker (``Ġ``, ``▁``,
   ``##``) equals a token's lookup word, ignoring case (``ĠParis`` typed for a WordPiece model).

An integer is a token id (form ``id``) in every vocabulary that has it. The answer (``Resolution``) names, per
model, the token ids and the form that matched, and the models searched whose vocabulary has no match, so a
search can say "no token for 'paris' in: run" instead of leaving a model out quietly.
"""

from typing import NamedTuple

import duckdb

from queries import sql as q
from queries.catalog import Catalog, loaded_words
from queries.rows import TokenMatch
from schema.layout import lookup_word

FORMS = ("id", "exact", "any-case", "word")


class Resolution(NamedTuple):
    """How a typed word or id resolved: ``matches`` (per model, every matching token with the ``form`` that
    matched, models in name order) and ``missing`` (the models searched that have no match)."""

    token: str | int
    matches: list[TokenMatch]
    missing: list[str]

    def models(self) -> list[str]:
        """Models with at least one match, in name order."""
        return sorted({m.model for m in self.matches})


def combine(token: str | int, models: list[str], found: list[tuple[str, list[tuple]]]) -> Resolution:
    """Pure: the first form in ``found`` (form, rows of (model, vocab_id, token_id, token, display)) that has
    rows for a model is that model's answer; models with none in any form are missing."""
    chosen: dict[str, tuple[str, list[tuple]]] = {}
    for form, rows in found:
        for r in rows:
            if r[0] in models and chosen.setdefault(r[0], (form, []))[0] == form:
                chosen[r[0]][1].append(r)
    matches = [TokenMatch.model_construct(model=r[0], vocab_id=r[1], token_id=r[2], token=r[3], display=r[4],
                                          form=form)
               for name in sorted(chosen) for form, rows in [chosen[name]]
               for r in sorted(set(rows), key=lambda r: r[2])]
    return Resolution(token, matches, [m for m in sorted(models) if m not in chosen])


def exact_in_memory(cat: Catalog, path: object, word: str) -> list[tuple] | None:
    """What ``sql.resolve_token(word, ignore_case=False)`` returns, from the vocabularies ``Lens.warm`` loaded;
    None while one of them is not loaded."""
    words = loaded_words(cat, path)  # type: ignore[arg-type]
    if words is None:
        return None
    return [(name, vid, tid, words[vid].token[tid], words[vid].display[tid])
            for name, vid in sorted(cat.models.items()) for tid in words[vid].ids.get(word, ())]


def id_in_memory(cat: Catalog, path: object, token_id: int) -> list[tuple] | None:
    """What ``sql.token_by_id(token_id)`` returns for the models of ``cat``, from the vocabularies ``Lens.warm``
    loaded; None while one of them is not loaded."""
    words = loaded_words(cat, path)  # type: ignore[arg-type]
    if words is None:
        return None
    return [(name, vid, token_id, words[vid].token[token_id], words[vid].display[token_id])
            for name, vid in sorted(cat.models.items()) if token_id in words[vid].token]


def resolve(con: duckdb.DuckDBPyConnection, cat: Catalog, path: object, token: str | int,
            model: str | None = None) -> Resolution:
    """Resolve ``token`` in the vocabulary of ``model``, or of every model of ``cat``; statements only for the
    models a cheaper form left unmatched (an exact lookup or a token id is in memory after ``Lens.warm``)."""
    models = [model] if model is not None else sorted(cat.models)

    def rows(built: q.Sql) -> list[tuple]:
        return con.execute(*q.inline(built)).fetchall()

    if isinstance(token, int):
        by_id = id_in_memory(cat, path, token)
        return combine(token, models, [("id", by_id if by_id is not None else rows(q.token_by_id(token)))])
    exact = exact_in_memory(cat, path, token)
    if exact is None:
        exact = rows(q.resolve_token(token, ignore_case=False))
    found = [("exact", exact)]
    left = set(models) - {r[0] for r in exact}
    for form, text in (("any-case", token), ("word", lookup_word(token))):
        if not left or (form == "word" and text.lower() == token.lower()):
            continue
        vocab_ids = sorted({cat.models[m] for m in left if m in cat.models})
        if not vocab_ids:
            break
        more = rows(q.resolve_token(text, ignore_case=True, vocab_ids=vocab_ids, word_only=form == "word"))
        found.append((form, more))
        left -= {r[0] for r in more}
    return combine(token, models, found)
