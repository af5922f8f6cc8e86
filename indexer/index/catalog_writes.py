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
from schema.errors import LensdbError
from schema.migrations import fill_token_forms
from schema.writer import append_arrow, next_id, writer


def vocab_id(con: duckdb.DuckDBPyConnection, vocab: Vocabulary) -> int:
    """The id of this token list in the store, adding it (tokens and typed forms) when it is new."""
    h = vocab.content_hash()
    row = con.execute("SELECT vocab_id FROM vocabularies WHERE content_hash = ?", [h]).fetchone()
    if row:
        return int(row[0])
    new_id = next_id(con, "vocabularies", "vocab_id")
    con.execute("INSERT INTO vocabularies VALUES (?, ?, ?, ?)", [new_id, h, vocab.size, vocab.kind])
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
    new_id = next_id(con, "models", "model_id")
    con.execute(
        "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [new_id, name, adapter.family, adapter.ckpt.model_type, vocab, d.d_model, d.n_layers, d.d_ff, d.n_heads],
    )
    return new_id


def delete_checkpoint(con: duckdb.DuckDBPyConnection, checkpoint_id: int) -> None:
    """Remove a checkpoint and every row indexed from it (``--replace``)."""
    con.execute(
        "DELETE FROM vector_tokens WHERE vector_id IN (SELECT vector_id FROM vectors WHERE checkpoint_id = ?)",
        [checkpoint_id],
    )
    for table in ("head_pairs", "vector_lists"):
        con.execute(
            f"DELETE FROM {table} WHERE vector_id IN (SELECT vector_id FROM vectors WHERE checkpoint_id = ?)",
            [checkpoint_id],
        )
    for table in ("vectors", "vector_units", "head_factors", "bases", "index_runs", "checkpoints"):
        con.execute(f"DELETE FROM {table} WHERE checkpoint_id = ?", [checkpoint_id])


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

    Safe because the caller is the file's only writer and runs one index at a time.
    """
    con.execute("UPDATE run_attempts SET status = 'interrupted', finished_at = ?, error = 'the process ended "
                "before the run committed; nothing of it was written' WHERE status = 'running'", [datetime.now()])


def log_attempt(con: duckdb.DuckDBPyConnection, content_hash: str, path: Path, name: str,
                started_at: datetime) -> int:
    """Record an attempt as running; its id."""
    attempt_id = next_id(con, "run_attempts", "attempt_id")
    con.execute("INSERT INTO run_attempts VALUES (?, ?, ?, ?, 'running', ?, NULL, NULL, NULL)",
                [attempt_id, content_hash, str(path), name, started_at])
    return attempt_id


def record_failure(db_path: str | Path, con: duckdb.DuckDBPyConnection | None, attempt_id: int,
                   err: BaseException, created: bool) -> None:
    """Note why an attempt failed, in its own transaction; a file this run created is removed instead."""
    if created:
        for leftover in (Path(db_path), Path(f"{db_path}.wal")):
            leftover.unlink(missing_ok=True)
        return
    status = "failed" if isinstance(err, Exception) else "interrupted"
    # readable by every SQL client: a lensdb error's own message, else only the error's kind (an exception's
    # text can quote what a file holds)
    reason = str(err) if isinstance(err, LensdbError) else f"{type(err).__name__} (the indexing process reported it)"
    try:
        with writer(db_path, con) as tx:
            tx.execute("UPDATE run_attempts SET status = ?, finished_at = ?, error = ? WHERE attempt_id = ?",
                       [status, datetime.now(), reason[:2000], attempt_id])
    except (LensdbError, duckdb.Error):
        pass  # the original error matters more; the next writer marks the attempt interrupted
