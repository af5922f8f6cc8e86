"""The rows an index run writes about what it indexes (vocabulary, model, checkpoint, attempts), apart from
the projected vectors themselves. Every function runs inside a writer transaction it is given."""

import time
from datetime import datetime
from pathlib import Path

import duckdb

from indexer.index.options import IndexResult
from indexer.index.records import token_batch
from indexer.model.adapters import Adapter
from indexer.model.vocab import Vocabulary
from schema.errors import Cancelled, LensdbError
from schema.migrations import fill_token_forms
from schema.writer import Store, append_arrow, insert_new

# What a replaced checkpoint takes with it that users made from it (``--replace`` says so), by table.
SAID_ON_REPLACE = {"traces": "traces", "alignment_runs": "alignment runs", "checkpoint_aliases": "linked steps"}


def vocab_id(con: duckdb.DuckDBPyConnection, vocab: Vocabulary) -> int:
    """The id of this token list in the store, adding it (tokens and typed forms) when it is new."""
    h = vocab.content_hash()
    row = con.execute("SELECT vocab_id FROM vocabularies WHERE content_hash = ?", [h]).fetchone()
    if row:
        return int(row[0])
    new_id = insert_new(con, "vocabularies", content_hash=h, size=vocab.size, tokenizer=vocab.kind)
    append_arrow(con, "tokens", token_batch(new_id, vocab))
    fill_token_forms(con, new_id)
    return new_id


def model_id(con: duckdb.DuckDBPyConnection, name: str, adapter: Adapter, vocab: int) -> int:
    """The id of model ``name``, added if new; an existing one must have the same architecture and vocabulary."""
    d = adapter.dims
    row = con.execute(
        "SELECT model_id, family, vocab_id, d_model, n_layers, d_ff FROM models WHERE name = ?", [name]
    ).fetchone()
    if row:
        if (row[1], row[2], row[3], row[4], row[5]) != (adapter.family, vocab, d.d_model, d.n_layers, d.d_ff):
            raise LensdbError(
                f"model {name!r} is already in the store with a different architecture or vocabulary; "
                "its checkpoints must share both. Pass another --name."
            )
        return int(row[0])
    return insert_new(con, "models", name=name, family=adapter.family, model_type=adapter.ckpt.model_type,
                      vocab_id=vocab, d_model=d.d_model, n_layers=d.n_layers, d_ff=d.d_ff, n_heads=d.n_heads)


def find_checkpoint(con: duckdb.DuckDBPyConnection, content_hash: str, legacy_hash: str | None = None,
                    vocab: Vocabulary | None = None) -> tuple | None:
    """The indexed checkpoint with this content: (id, label, model, basis, top_k), or None.

    ``legacy_hash`` (config and weights only, as lensdb hashed before the tokenizer files counted) with
    ``vocab``: a checkpoint a store recorded under that hash is the same one if its model's token list is this
    vocabulary; it is then given the new hash (here, in the caller's transaction) and found."""
    query = ("SELECT c.checkpoint_id, c.label, m.name, r.basis, r.top_k FROM checkpoints c "
             "JOIN models m USING (model_id) JOIN index_runs r USING (checkpoint_id) WHERE c.content_hash = ?")
    found = con.execute(query, [content_hash]).fetchone()
    if found or legacy_hash is None or vocab is None:
        return found
    old = con.execute(query + " AND m.vocab_id = (SELECT vocab_id FROM vocabularies WHERE content_hash = ?)",
                      [legacy_hash, vocab.content_hash()]).fetchone()
    if old:
        con.execute("UPDATE checkpoints SET content_hash = ? WHERE checkpoint_id = ?", [content_hash, old[0]])
        con.execute("UPDATE checkpoint_aliases SET content_hash = ? WHERE content_hash = ?",
                    [content_hash, legacy_hash])
    return old


def unchanged(found: tuple, content_hash: str, started: float) -> IndexResult:
    return IndexResult(
        status="unchanged", model=found[2], checkpoint=found[1], content_hash=content_hash,
        n_vectors=0, n_projections=0, seconds=time.perf_counter() - started,
        message=f"already indexed as {found[2]}/{found[1]} (basis {found[3]}, top-k {found[4]}); "
        "nothing to do. Pass --replace to index it again with the options given.",
    )


def mark_interrupted(con: duckdb.DuckDBPyConnection) -> None:
    """Attempts still 'running' when a writer starts belong to a process that died: mark them interrupted.

    Safe because the caller holds the file's writer for its whole run and runs one index at a time.
    """
    con.execute("UPDATE run_attempts SET status = 'interrupted', finished_at = ?, error = 'the process ended "
                "before the run committed; nothing of it was written' WHERE status = 'running'", [datetime.now()])


def log_attempt(con: duckdb.DuckDBPyConnection, content_hash: str, path: Path, name: str,
                started_at: datetime) -> int:
    """Record an attempt as running; its id."""
    return insert_new(con, "run_attempts", content_hash=content_hash, path=str(path), model=name, status="running",
                      started_at=started_at)


def record_failure(store: Store, attempt_id: int, err: BaseException) -> None:
    """Note why an attempt failed (or was cancelled), in its own transaction; nothing to note in a store the run
    was creating: that file is never put in place."""
    if store.creating:
        return
    status = "cancelled" if isinstance(err, Cancelled) else "failed" if isinstance(err, Exception) else "interrupted"
    # readable by every SQL client: a lensdb error's own message, else only the error's kind (an exception's
    # text can quote what a file holds)
    reason = str(err) if isinstance(err, LensdbError) else f"{type(err).__name__} (the indexing process reported it)"
    try:
        with store.transaction() as tx:
            tx.execute("UPDATE run_attempts SET status = ?, finished_at = ?, error = ? WHERE attempt_id = ?",
                       [status, datetime.now(), reason[:2000], attempt_id])
    except (LensdbError, duckdb.Error):
        pass  # the original error matters more; the next writer marks the attempt interrupted
