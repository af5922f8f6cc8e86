"""The store's tables, declared once.

Ids are handed out by the writer from ``id_counters`` (``schema.ids``), never as max + 1: an id is never given
twice, even after the rows that had it were deleted (a replaced or forgotten checkpoint), so nothing stored
elsewhere can come to point at another row. Columns marked ``info={"counter": True}`` take their ids there.

References between tables are declared as foreign keys (``_ref``) but not created in DuckDB (its foreign keys
cannot cascade and would index every bulk load): ``schema.deletes`` derives every delete from them (what goes
with a checkpoint, a model, a trace), and ``lensdb check`` reads them back from the ``foreign_keys`` view to
look for orphans, so a new table cannot be forgotten by either.

Bulk rows (``vectors``, ``vector_tokens``) never go through SQLAlchemy: they arrive as Arrow and are
copied with ``INSERT … SELECT`` (see ``schema.writer``). A change here raises ``schema.layout.SCHEMA_VERSION``
and adds its step to ``schema.migrations``.
"""

import sqlalchemy as sa

metadata = sa.MetaData()


def _id(name: str, doc: str) -> sa.Column:
    """A table's own id, handed out by the writer from ``id_counters``."""
    return sa.Column(name, sa.Integer, primary_key=True, autoincrement=False, comment=doc, info={"counter": True})


def _ref(target: str, on_delete: str = "CASCADE") -> sa.ForeignKey:
    """A reference to ``table.column``. ``on_delete``: CASCADE (this row goes with the row it names) or SET NULL
    (this row stays, the reference is cleared). Declared, not created in DuckDB: see the module docstring."""
    return sa.ForeignKey(target, ondelete=on_delete)


class RawFloats(sa.types.UserDefinedType):
    """``FLOAT[]`` stored without compression: vectors of trained weights do not compress (DuckDB's float
    compression made them larger, 373 against 309 MB for 200k × 384), and skipping it writes them ~6× faster and
    lets ``list_dot_product`` scan them ~4× faster (bench/exact_search.py). The column stays a plain list for SQL."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "FLOAT[] USING COMPRESSION uncompressed"


lensdb_meta = sa.Table(
    "lensdb_meta",
    metadata,
    sa.Column("key", sa.String, primary_key=True, comment="setting name, e.g. schema_version"),
    sa.Column("value", sa.String, nullable=False, comment="its value as text"),
    comment="Facts about the store itself; schema_version tells lensdb whether it can read this file, "
    "token_runs where the token tables' sorted runs start (first vector ids, JSON).",
)

id_counters = sa.Table(
    "id_counters",
    metadata,
    sa.Column("table_name", sa.String, primary_key=True, comment="table whose ids this row hands out"),
    sa.Column("column_name", sa.String, nullable=False, comment="the column of that table the ids go to"),
    sa.Column("last_id", sa.BigInteger, nullable=False,
              comment="the highest id ever handed out there; the next is last_id + 1, even after rows are deleted"),
    comment="The writer's id counters: an id is never handed out twice, even after a checkpoint is replaced or "
    "forgotten, so stored references (trace neurons, aliases) never come to name another row.",
)

vocabularies = sa.Table(
    "vocabularies",
    metadata,
    _id("vocab_id", "vocabulary id"),
    sa.Column("content_hash", sa.String, nullable=False, unique=True, comment="sha256 of the token list"),
    sa.Column("size", sa.Integer, nullable=False, comment="number of token ids (embedding rows)"),
    sa.Column("tokenizer", sa.String, nullable=False, comment="tokenizer model: BPE, WordPiece, Unigram…"),
    comment="One row per distinct token list; models that share a vocabulary share its tokens.",
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("vocab_id", sa.Integer, _ref("vocabularies.vocab_id"),
              nullable=False, comment="vocabulary the id belongs to"),
    sa.Column("token_id", sa.Integer, nullable=False, comment="row of the embedding matrix"),
    sa.Column("token", sa.String, nullable=False, comment="the tokenizer's own spelling, e.g. Ġparis, ##s"),
    sa.Column("display", sa.String, nullable=False, comment="readable text of the token, e.g. ' paris'"),
    sa.Column("word", sa.String, nullable=False, comment="lookup key: display without space/##/▁ markers"),
    sa.PrimaryKeyConstraint("vocab_id", "token_id"),
    comment="Every token of every vocabulary, with the forms users type.",
)

# A typed word is resolved by one equality on ``form``. Loaded sorted by form, the table answers it from the one
# row group whose min/max admit the word: no index to load on a cold open (ART indexes on the three columns of
# ``tokens`` cost ~10 ms there), and the token's spelling comes along without a join back to ``tokens``.
token_forms = sa.Table(
    "token_forms",
    metadata,
    sa.Column("form", sa.String, nullable=False, comment="a form users type: the word, raw spelling or display text"),
    sa.Column("vocab_id", sa.Integer, _ref("vocabularies.vocab_id"), nullable=False, comment="vocabulary of the token"),
    sa.Column("token_id", sa.Integer, nullable=False, comment="the token that has this form"),
    sa.Column("token", sa.String, nullable=False, comment="the token's raw spelling (as in tokens)"),
    sa.Column("display", sa.String, nullable=False, comment="the token's readable text (as in tokens)"),
    comment="Each token under each form users type, one row per distinct (form, token), sorted by form per "
    "vocabulary: exact token lookups read it by equality on form.",
)

models = sa.Table(
    "models",
    metadata,
    _id("model_id", "model id"),
    sa.Column("name", sa.String, nullable=False, unique=True, comment="name given at index time"),
    sa.Column("family", sa.String, nullable=False, comment="adapter that read it: gpt2, bert…"),
    sa.Column("model_type", sa.String, nullable=False, comment="config.json model_type"),
    sa.Column("vocab_id", sa.Integer, _ref("vocabularies.vocab_id", "RESTRICT"),
              nullable=False, comment="its vocabulary"),
    sa.Column("d_model", sa.Integer, nullable=False, comment="residual stream width"),
    sa.Column("n_layers", sa.Integer, nullable=False, comment="number of transformer blocks"),
    sa.Column("d_ff", sa.Integer, nullable=False, comment="FF neurons per layer"),
    sa.Column("n_heads", sa.Integer, nullable=False, comment="attention heads per layer"),
    comment="A named model; its checkpoints share one architecture and vocabulary.",
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    _id("checkpoint_id", "checkpoint id"),
    sa.Column("model_id", sa.Integer, _ref("models.model_id"), nullable=False, comment="model it belongs to"),
    sa.Column("label", sa.String, nullable=False, comment="readable name: the folder name"),
    sa.Column("content_hash", sa.String, nullable=False, unique=True,
              comment="sha256 of config, weights and tokenizer files"),
    sa.Column("path", sa.String, nullable=False, comment="folder it was read from"),
    sa.Column("step", sa.BigInteger, nullable=True, comment="training step, where known"),
    sa.Column("indexed_at", sa.DateTime, nullable=False, comment="when its index run committed"),
    sa.UniqueConstraint("model_id", "label"),
    comment="One set of weights; identity is the content hash, so identical content is indexed once.",
)

index_runs = sa.Table(
    "index_runs",
    metadata,
    _id("run_id", "run id"),
    sa.Column("checkpoint_id", sa.Integer, _ref("checkpoints.checkpoint_id"),
              nullable=False, comment="checkpoint the run wrote"),
    sa.Column("status", sa.String, nullable=False, comment="complete (only complete runs are committed)"),
    sa.Column("started_at", sa.DateTime, nullable=False, comment="start time"),
    sa.Column("finished_at", sa.DateTime, nullable=False, comment="commit time"),
    sa.Column("basis", sa.String, nullable=False, comment="folded or raw"),
    sa.Column("basis_flags", sa.String, nullable=False, comment="JSON: how each basis was built"),
    sa.Column("top_k", sa.Integer, nullable=False, comment="tokens kept per vector and side"),
    sa.Column("components", sa.String, nullable=False, comment="JSON list of components indexed"),
    sa.Column("n_vectors", sa.BigInteger, nullable=False, comment="vectors written"),
    sa.Column("n_projections", sa.BigInteger, nullable=False, comment="vector_tokens rows written"),
    sa.Column("seconds", sa.Float, nullable=False, comment="wall time of the run"),
    sa.Column("lensdb_version", sa.String, nullable=False, comment="version that wrote it"),
    comment="How each checkpoint was indexed: basis, flags, k, counts, timing.",
)

vectors = sa.Table(
    "vectors",
    metadata,
    # No primary key: an ART index over hundreds of millions of rows would slow every bulk load; the writer
    # hands out vector ids in one block per run from id_counters.
    sa.Column("vector_id", sa.BigInteger, nullable=False, comment="vector id", info={"counter": True}),
    sa.Column("checkpoint_id", sa.Integer, _ref("checkpoints.checkpoint_id"),
              nullable=False, comment="checkpoint it comes from"),
    sa.Column("component", sa.String, nullable=False, comment="ff_value, ff_key, …"),
    sa.Column("layer", sa.Integer, nullable=False, comment="block number from 0"),
    sa.Column("head", sa.Integer, nullable=True, comment="attention head, NULL for non-head components"),
    sa.Column("idx", sa.Integer, nullable=False, comment="index within layer (neuron number)"),
    sa.Column("norm", sa.Float, nullable=False, comment="L2 norm of the vector"),
    sa.Column("logit_mean", sa.Float, nullable=False, comment="mean of its projection over the vocabulary"),
    sa.Column("logit_std", sa.Float, nullable=False, comment="std of its projection over the vocabulary"),
    sa.Column("expert", sa.Integer, nullable=True,
              comment="mixture-of-experts expert the vector belongs to, NULL outside experts (schema version 3)"),
    sa.Column("dictionary_id", sa.Integer, _ref("dictionaries.dictionary_id"),
              nullable=True, comment="the dictionary a latent or direction belongs to (sae_dec, sae_enc, dir_write, "
              "dir_read); NULL for a model's own vectors (schema version 7)"),
    sa.Column("top_zk", sa.REAL, nullable=True,
              comment="z-score of its k-th (last) stored top token: no token outside its top list scores higher, "
              "the bound exact searches certify answers with (NULL: unknown)"),
    sa.Column("bottom_zk", sa.REAL, nullable=True,
              comment="z-score of its k-th stored bottom token: no token outside its bottom list scores lower"),
    comment="Every indexed parameter vector with exact statistics of its full vocabulary projection.",
)

vector_units = sa.Table(
    "vector_units",
    metadata,
    sa.Column("checkpoint_id", sa.Integer, _ref("checkpoints.checkpoint_id"), nullable=False, comment="checkpoint"),
    sa.Column("component", sa.String, nullable=False, comment="component"),
    sa.Column("layer", sa.Integer, nullable=False, comment="layer"),
    sa.Column("head", sa.Integer, nullable=True, comment="head, NULL for non-head components"),
    sa.Column("first_vector_id", sa.BigInteger, nullable=False, comment="first vector id of the unit"),
    sa.Column("last_vector_id", sa.BigInteger, nullable=False, comment="last vector id (inclusive)"),
    sa.Column("first_index", sa.Integer, nullable=False, comment="idx of the first vector"),
    sa.Column("expert", sa.Integer, nullable=True, comment="mixture-of-experts expert, NULL outside experts"),
    sa.Column("role", sa.String, nullable=True,
              comment="writes (into the residual stream: read through the unembedding), reads (from it: read "
              "through the reading basis) or pairs (a head map's token pairs); the component's role as its adapter "
              "declares it (schema version 6; older units filled from the component name by the upgrade)"),
    sa.Column("dictionary_id", sa.Integer, _ref("dictionaries.dictionary_id"),
              nullable=True, comment="the dictionary of a block of latents; NULL for a model's own vectors"),
    comment="The contiguous block of vector ids each index run wrote per (checkpoint, component, layer, head): "
    "token lookups filter and label hits by these ranges instead of joining vectors. "
    "(checkpoint, component, layer, head, expert) for mixture-of-experts models.",
)

head_pairs = sa.Table(
    "head_pairs",
    metadata,
    sa.Column("vector_id", sa.BigInteger, _ref("vectors.vector_id"),
              nullable=False, comment="the head's attn_ov_pair / attn_qk_pair vector"),
    sa.Column("side", sa.String, nullable=False, comment="top (strongest entries) or bottom (most negative)"),
    sa.Column("rank", sa.SmallInteger, nullable=False, comment="1 = strongest on that side"),
    sa.Column("source_token_id", sa.Integer, nullable=False,
              comment="OV: the token attended to; QK: the query token"),
    sa.Column("token_id", sa.Integer, nullable=False, comment="OV: the token written; QK: the key token"),
    sa.Column("score", sa.REAL, nullable=False, comment="the map's entry"),
    sa.Column("zscore", sa.REAL, nullable=False, comment="(score - mean) / std over all V² entries of the map"),
    comment="Top-k and bottom-k entries of each head's V×V OV and QK maps, exact, sorted by token_id.",
)

head_factors = sa.Table(
    "head_factors",
    metadata,
    sa.Column("checkpoint_id", sa.Integer, _ref("checkpoints.checkpoint_id"), nullable=False, comment="checkpoint"),
    sa.Column("layer", sa.Integer, nullable=False, comment="layer"),
    sa.Column("head", sa.Integer, nullable=False, comment="head"),
    sa.Column("kind", sa.String, nullable=False, comment="ov or qk"),
    sa.Column("d_head", sa.Integer, nullable=False, comment="rows of each factor"),
    sa.Column("d_model", sa.Integer, nullable=False, comment="columns of each factor"),
    sa.Column("left", sa.LargeBinary, nullable=False,
              comment="float32 [d_head, d_model]: W_V (ov) or W_Q (qk) rows, input norm folded in"),
    sa.Column("right", sa.LargeBinary, nullable=False,
              comment="float32 [d_head, d_model]: W_O rows (ov) or W_K rows (qk, input norm folded in)"),
    comment="Each head's factors, so one row of its V×V maps is computed exactly at query time.",
)

bases = sa.Table(
    "bases",
    metadata,
    sa.Column("checkpoint_id", sa.Integer, _ref("checkpoints.checkpoint_id"), nullable=False, comment="checkpoint"),
    sa.Column("role", sa.String, nullable=False, comment="writes (output side) or reads (input side)"),
    sa.Column("vocab_size", sa.Integer, nullable=False, comment="rows"),
    sa.Column("d_model", sa.Integer, nullable=False, comment="columns"),
    sa.Column("data", sa.LargeBinary, nullable=False, comment="float32 [vocab_size, d_model], row-major"),
    comment="The projection bases of checkpoints indexed with --head-maps (see index_runs.basis_flags).",
)

vector_tokens = sa.Table(
    "vector_tokens",
    metadata,
    sa.Column("vector_id", sa.BigInteger, _ref("vectors.vector_id"), nullable=False, comment="vector"),
    sa.Column("side", sa.String, nullable=False, comment="top (promotes) or bottom (suppresses)"),
    sa.Column("rank", sa.SmallInteger, nullable=False, comment="1 = strongest on that side"),
    sa.Column("token_id", sa.Integer, nullable=False, comment="token in the model's vocabulary"),
    sa.Column("score", sa.REAL, nullable=False, comment="logit: basis row · vector"),
    sa.Column("zscore", sa.REAL, nullable=False, comment="(score - logit_mean) / logit_std"),
    comment="Top-k and bottom-k tokens of every vector, loaded sorted by token_id so token lookups skip "
    "row groups by their min/max without any index.",
)

# The same top and bottom tokens in vector order: one row per vector, inserted by ascending vector_id, so a
# vector's page is a point lookup (min/max of vector_id) where vector_tokens, sorted by token, needs a scan.
# Exact search (any token, any direction): every vector as its basis reads it, and the basis rows that read it.
vector_values = sa.Table(
    "vector_values",
    metadata,
    sa.Column("vector_id", sa.BigInteger, _ref("vectors.vector_id"), nullable=False,
              comment="vector (loaded in vector_id order)"),
    sa.Column("values", RawFloats, nullable=False,
              comment="float32 [d_model]: the vector as its basis reads it (reader norm folded, carried through "
              "the norms on its path); basis_rows.values · values = its score for that token"),
    comment="Every stored vector's values (runs indexed without --no-vectors), so any token or direction is "
    "scored exactly: who promotes X beyond the top-k lists, contrasts, sets, texts.",
)

basis_rows = sa.Table(
    "basis_rows",
    metadata,
    sa.Column("checkpoint_id", sa.Integer, _ref("checkpoints.checkpoint_id"), nullable=False, comment="checkpoint"),
    sa.Column("role", sa.String, nullable=False, comment="writes or reads: the basis of that role's vectors"),
    sa.Column("token_id", sa.Integer, nullable=False, comment="token (row of the basis matrix)"),
    sa.Column("values", RawFloats, nullable=False,
              comment="float32 [d_model]: the token's row of the role's basis matrix, as the run projected with"),
    comment="The projection bases of checkpoints with stored vectors, one row per token, sorted by (checkpoint, "
    "role, token_id): a token's row is a point lookup.",
)

value_blocks = sa.Table(
    "value_blocks",
    metadata,
    sa.Column("checkpoint_id", sa.Integer, _ref("checkpoints.checkpoint_id"), nullable=False, comment="checkpoint"),
    sa.Column("first_vector_id", sa.BigInteger, nullable=False, comment="first vector id of the block"),
    sa.Column("last_vector_id", sa.BigInteger, nullable=False, comment="last vector id (inclusive)"),
    sa.Column("role", sa.String, nullable=False, comment="the basis_rows role that reads these vectors"),
    comment="Blocks of vector ids whose values are in vector_values, with the basis role that reads them; "
    "vectors outside every block (runs with --no-vectors or before schema version 6, head-map pairs) are "
    "searched through their top-k lists only.",
)

vector_lists = sa.Table(
    "vector_lists",
    metadata,
    sa.Column("vector_id", sa.BigInteger, _ref("vectors.vector_id"), nullable=False, comment="vector"),
    sa.Column("top_token_ids", sa.ARRAY(sa.Integer), nullable=False, comment="its top-k tokens, strongest first"),
    sa.Column("top_scores", sa.ARRAY(sa.REAL), nullable=False, comment="their scores"),
    sa.Column("bottom_token_ids", sa.ARRAY(sa.Integer), nullable=False, comment="its bottom-k tokens, lowest first"),
    sa.Column("bottom_scores", sa.ARRAY(sa.REAL), nullable=False, comment="their scores"),
    comment="Each vector's top-k and bottom-k tokens as lists (the rows of vector_tokens in vector order), "
    "loaded by vector_id: reading one vector's tokens is a point lookup. z-scores follow from the vector's "
    "logit_mean and logit_std.",
)

# ---- training runs: registered sources, linked identical steps, watch cycles ----------------------------

sources = sa.Table(
    "sources",
    metadata,
    _id("source_id", "source id"),
    sa.Column("name", sa.String, nullable=False, unique=True, comment="model name its checkpoints are indexed as"),
    sa.Column("path", sa.String, nullable=False, comment="folder watched (absolute)"),
    sa.Column("kind", sa.String, nullable=False, comment="checkpoint, trainer (checkpoint-N folders) or hf_cache"),
    sa.Column("top_k", sa.Integer, nullable=False, comment="tokens kept per vector and side when indexing"),
    sa.Column("basis", sa.String, nullable=False, comment="folded or raw"),
    sa.Column("registered_at", sa.DateTime, nullable=False, comment="when it was registered"),
    comment="Registered models: folders `lensdb watch` re-scans for new complete checkpoints.",
)

checkpoint_aliases = sa.Table(
    "checkpoint_aliases",
    metadata,
    _id("alias_id", "alias id"),
    sa.Column("source_id", sa.Integer, _ref("sources.source_id"),
              nullable=False, comment="registered source the step was found in"),
    sa.Column("label", sa.String, nullable=False, comment="the step's own label (folder or ref name)"),
    sa.Column("step", sa.BigInteger, nullable=True, comment="training step, where known"),
    sa.Column("path", sa.String, nullable=False, comment="folder it was found at"),
    sa.Column("content_hash", sa.String, nullable=False, comment="sha256 of config, weights and tokenizer files"),
    sa.Column("checkpoint_id", sa.Integer, _ref("checkpoints.checkpoint_id"),
              nullable=False, comment="the indexed checkpoint with identical content"),
    sa.Column("linked_at", sa.DateTime, nullable=False, comment="when the watcher linked it"),
    sa.UniqueConstraint("source_id", "label"),
    comment="Steps whose content is bit-identical to an already indexed checkpoint: linked, not re-indexed.",
)

watch_runs = sa.Table(
    "watch_runs",
    metadata,
    _id("watch_id", "watch cycle id"),
    sa.Column("started_at", sa.DateTime, nullable=False, comment="start of the cycle"),
    sa.Column("finished_at", sa.DateTime, nullable=True, comment="end of the cycle; NULL while running"),
    sa.Column("status", sa.String, nullable=False,
              comment="running, ok, failed (some checkpoint failed), interrupted (process ended mid-cycle)"),
    sa.Column("error", sa.String, nullable=True, comment="first failure of the cycle, if any"),
    sa.Column("n_indexed", sa.Integer, nullable=False, comment="checkpoints indexed"),
    sa.Column("n_linked", sa.Integer, nullable=False, comment="steps linked to identical indexed content"),
    sa.Column("n_skipped", sa.Integer, nullable=False, comment="checkpoints skipped as incomplete"),
    sa.Column("n_failed", sa.Integer, nullable=False, comment="checkpoints that failed to index"),
    sa.Column("n_known", sa.Integer, nullable=False, comment="checkpoints already indexed or linked"),
    comment="One row per watch cycle; its checkpoints are in watch_items.",
)

watch_items = sa.Table(
    "watch_items",
    metadata,
    sa.Column("watch_id", sa.Integer, _ref("watch_runs.watch_id"), nullable=False, comment="watch cycle"),
    sa.Column("source", sa.String, nullable=False, comment="registered source name"),
    sa.Column("path", sa.String, nullable=False, comment="checkpoint folder"),
    sa.Column("label", sa.String, nullable=False, comment="checkpoint label"),
    sa.Column("step", sa.BigInteger, nullable=True, comment="training step, where known"),
    sa.Column("action", sa.String, nullable=False, comment="indexed, linked, skipped or failed"),
    sa.Column("reason", sa.String, nullable=True, comment="why it was skipped or failed; what it was linked to"),
    sa.Column("decided_at", sa.DateTime, nullable=False, comment="when it was decided"),
    comment="What each watch cycle did with each new checkpoint it found, and why.",
)

# ---- reliability: every index attempt, committed on its own before the run's one transaction ----

run_attempts = sa.Table(
    "run_attempts",
    metadata,
    _id("attempt_id", "attempt id"),
    sa.Column("content_hash", sa.String, nullable=False, comment="sha256 of the checkpoint it tried to index"),
    sa.Column("path", sa.String, nullable=False, comment="checkpoint folder"),
    sa.Column("model", sa.String, nullable=False, comment="model name it was indexing as"),
    sa.Column("status", sa.String, nullable=False,
              comment="running, complete, failed (clean error, rolled back), cancelled (stopped on request, rolled "
              "back) or interrupted (the process ended mid-run: found still running by the next writer; nothing "
              "of it was committed)"),
    sa.Column("started_at", sa.DateTime, nullable=False, comment="start time"),
    sa.Column("finished_at", sa.DateTime, nullable=True, comment="end time; NULL while running"),
    sa.Column("error", sa.String, nullable=True, comment="why it failed or was interrupted"),
    sa.Column("checkpoint_id", sa.Integer, _ref("checkpoints.checkpoint_id", "SET NULL"),
              nullable=True, comment="the checkpoint it wrote, once complete"),
    comment="A log of index attempts, written in its own small transactions: the run's rows commit all or "
    "nothing, this row says what happened to an attempt that did not commit.",
)

# ---- forward passes: traces in vocabulary space --------------------------------------------------------------
# Every row belongs to one trace;
# ``position`` is the input position (0-based) and ``layer`` the block (for states: 0 = after the embedding,
# l = after block l - 1).

traces = sa.Table(
    "traces",
    metadata,
    _id("trace_id", "trace id"),
    sa.Column("checkpoint_id", sa.Integer, _ref("checkpoints.checkpoint_id"),
              nullable=False, comment="checkpoint whose weights ran"),
    sa.Column("prompt", sa.String, nullable=False, comment="the input text"),
    sa.Column("n_positions", sa.Integer, nullable=False, comment="number of input tokens"),
    sa.Column("position", sa.Integer, nullable=False, comment="the position the trace focuses on (0-based)"),
    sa.Column("prediction_token_id", sa.Integer, nullable=False, comment="the model's top token at that position"),
    sa.Column("prediction_logit", sa.Float, nullable=False, comment="its logit"),
    sa.Column("readout", sa.String, nullable=False,
              comment="lm_head (causal LMs), mlm_head (an encoder's own masked-LM head), or none (an encoder without "
              "an LM head: the prediction columns hold the top of h·Eᵀ, no model's prediction; traces before "
              "schema version 3 say tied_embedding for h·Eᵀ)"),
    sa.Column("interventions", sa.String, nullable=False, comment="JSON list: zero/boost L.N, zero-head L.H"),
    sa.Column("boost_value", sa.Float, nullable=False, comment="activation a boosted neuron is set to"),
    sa.Column("baseline_trace_id", sa.Integer, _ref("traces.trace_id", "SET NULL"), nullable=True,
              comment="the same input without interventions (NULL for a trace without any)"),
    sa.Column("error", sa.Float, nullable=False,
              comment="max |sum of decomposition terms - model's final hidden state| over positions"),
    sa.Column("stream_error", sa.Float, nullable=False, comment="max error of the running sum at every norm"),
    sa.Column("created_at", sa.DateTime, nullable=False, comment="when it ran"),
    sa.Column("seconds", sa.Float, nullable=False, comment="wall time of the forward pass and analysis"),
    comment="One forward pass of one input through one checkpoint, with any interventions.",
)

trace_states = sa.Table(
    "trace_states",
    metadata,
    sa.Column("trace_id", sa.Integer, _ref("traces.trace_id"), nullable=False, comment="trace"),
    sa.Column("position", sa.Integer, nullable=False, comment="input position"),
    sa.Column("layer", sa.Integer, nullable=False, comment="0 = after the embedding, l = after block l-1"),
    sa.Column("token_id", sa.Integer, nullable=False, comment="input token at the position"),
    sa.Column("prediction_token_id", sa.Integer, nullable=False, comment="final prediction at the position"),
    sa.Column("norm", sa.Float, nullable=False, comment="L2 norm of the residual stream"),
    sa.Column("pred_rank", sa.Integer, nullable=False, comment="rank of the final prediction in the logit lens"),
    sa.Column("pred_logit", sa.Float, nullable=False, comment="its logit in the logit lens"),
    comment="The residual stream per position and layer read as logits (logit lens); top tokens in "
    "trace_top_tokens (node 'state').",
)

trace_heads = sa.Table(
    "trace_heads",
    metadata,
    sa.Column("trace_id", sa.Integer, _ref("traces.trace_id"), nullable=False, comment="trace"),
    sa.Column("position", sa.Integer, nullable=False, comment="input position"),
    sa.Column("layer", sa.Integer, nullable=False, comment="block"),
    sa.Column("head", sa.Integer, nullable=False, comment="attention head"),
    sa.Column("norm", sa.Float, nullable=False, comment="L2 norm of the head's output z_h W_O[h]"),
    sa.Column("pred_rank", sa.Integer, nullable=False,
              comment="rank of the position's final prediction in the head output's folded projection"),
    comment="Each head's output at each position; top tokens in trace_top_tokens (node 'head'), top attended "
    "positions in trace_attention, its share of the final state in trace_terms.",
)

trace_attention = sa.Table(
    "trace_attention",
    metadata,
    sa.Column("trace_id", sa.Integer, _ref("traces.trace_id"), nullable=False, comment="trace"),
    sa.Column("position", sa.Integer, nullable=False, comment="query position"),
    sa.Column("layer", sa.Integer, nullable=False, comment="block"),
    sa.Column("head", sa.Integer, nullable=False, comment="attention head"),
    sa.Column("rank", sa.SmallInteger, nullable=False, comment="1 = most attended"),
    sa.Column("key_position", sa.Integer, nullable=False, comment="attended position"),
    sa.Column("weight", sa.Float, nullable=False, comment="attention weight"),
    comment="The three positions each head attends to most, per query position.",
)

trace_neurons = sa.Table(
    "trace_neurons",
    metadata,
    sa.Column("trace_id", sa.Integer, _ref("traces.trace_id"), nullable=False, comment="trace"),
    sa.Column("position", sa.Integer, nullable=False, comment="input position"),
    sa.Column("layer", sa.Integer, nullable=False, comment="block"),
    sa.Column("idx", sa.Integer, nullable=False, comment="FF neuron"),
    sa.Column("side", sa.String, nullable=False, comment="top (largest activation x value norm) or bottom"),
    sa.Column("rank", sa.SmallInteger, nullable=False, comment="1 = strongest on that side"),
    sa.Column("activation", sa.Float, nullable=False, comment="input of the FF output projection"),
    sa.Column("value_norm", sa.Float, nullable=False, comment="norm of its value vector"),
    sa.Column("score", sa.Float, nullable=False, comment="activation x value_norm"),
    sa.Column("logit", sa.Float, nullable=False,
              comment="its write's effect on the final prediction's logit (through every later norm)"),
    sa.Column("pred_rank", sa.Integer, nullable=False,
              comment="rank of the final prediction in sign(activation) x its value's folded projection"),
    sa.Column("vector_id", sa.BigInteger, _ref("vectors.vector_id", "SET NULL"),
              nullable=True, comment="its ff_value in vectors, if indexed"),
    comment="The FF neurons with the largest (top) and smallest (bottom) activation x value norm, per position "
    "and layer, linked to their indexed projections.",
)

trace_terms = sa.Table(
    "trace_terms",
    metadata,
    sa.Column("trace_id", sa.Integer, _ref("traces.trace_id"), nullable=False, comment="trace"),
    sa.Column("position", sa.Integer, nullable=False, comment="input position"),
    sa.Column("kind", sa.String, nullable=False,
              comment="embedding, head, ff, bias or norm (Mickus et al.'s terms; traces before schema version 3 "
              "centred their terms and had norm_bias, each LayerNorm's β only)"),
    sa.Column("layer", sa.Integer, nullable=True, comment="block (NULL: embedding, embedding/final norm bias)"),
    sa.Column("head", sa.Integer, nullable=True, comment="head, for kind head"),
    sa.Column("norm", sa.Float, nullable=False, comment="L2 norm of the term in the final hidden state"),
    sa.Column("logit", sa.Float, nullable=False, comment="term . W_U[prediction]: its part of the logit"),
    comment="The Muppet decomposition: the final hidden state at each position = sum of these terms "
    "(to traces.error).",
)

trace_top_tokens = sa.Table(
    "trace_top_tokens",
    metadata,
    sa.Column("trace_id", sa.Integer, _ref("traces.trace_id"), nullable=False, comment="trace"),
    sa.Column("position", sa.Integer, nullable=False, comment="input position"),
    sa.Column("node", sa.String, nullable=False, comment="state, head or neuron"),
    sa.Column("layer", sa.Integer, nullable=False, comment="as in trace_states / trace_heads / trace_neurons"),
    sa.Column("unit", sa.Integer, nullable=True, comment="head or neuron index; NULL for states"),
    sa.Column("rank", sa.SmallInteger, nullable=False, comment="1 = highest logit"),
    sa.Column("token_id", sa.Integer, nullable=False, comment="token"),
    sa.Column("score", sa.Float, nullable=False, comment="logit (states) or folded projection score"),
    comment="Top tokens of each state (logit lens), head output and neuron write (sign-adjusted).",
)

# ---- across models: alignment runs and their scores -------------------------------------------------------

alignment_runs = sa.Table(
    "alignment_runs",
    metadata,
    _id("alignment_id", "alignment run id"),
    sa.Column("checkpoint_a", sa.Integer, _ref("checkpoints.checkpoint_id"),
              nullable=False, comment="checkpoint of model A (rows of the matrix)"),
    sa.Column("checkpoint_b", sa.Integer, _ref("checkpoints.checkpoint_id"),
              nullable=False, comment="checkpoint of model B (columns)"),
    sa.Column("component", sa.String, nullable=False, comment="component compared: ff_value, ff_key, attn_o…"),
    sa.Column("unit", sa.String, nullable=False, comment="what neuron_matches pairs: neuron or head"),
    sa.Column("basis", sa.String, nullable=False, comment="raw (E as is, as Dar et al.) or folded"),
    sa.Column("statistic", sa.String, nullable=False,
              comment="how two layers compare: best (mean over A's vectors of their best |correlation| in B), paper "
              "(mean |correlation| over all pairs, as Dar et al.), or best_signed (runs before schema version 3: "
              "best signed correlation)"),
    sa.Column("vocab_size", sa.Integer, nullable=False, comment="tokens the correlations run over"),
    sa.Column("raw_comparable", sa.Boolean, nullable=False,
              comment="whether both models have the same width, so raw-parameter correlations exist"),
    sa.Column("mean_matched", sa.Float, nullable=False, comment="mean layer similarity over the matched layer pairs"),
    sa.Column("seconds", sa.Float, nullable=False, comment="wall time of the run"),
    sa.Column("created_at", sa.DateTime, nullable=False, comment="when it was committed"),
    sa.Column("dictionary_a", sa.Integer, _ref("dictionaries.dictionary_id"),
              nullable=True, comment="with unit latent: the dictionary of A whose latents were compared (schema 6)"),
    sa.Column("dictionary_b", sa.Integer, _ref("dictionaries.dictionary_id"),
              nullable=True, comment="with unit latent: the dictionary of B"),
    comment="One row per `lensdb align`: two checkpoints with the same vocabulary compared in embedding space.",
)

layer_similarity = sa.Table(
    "layer_similarity",
    metadata,
    sa.Column("alignment_id", sa.Integer, _ref("alignment_runs.alignment_id"), nullable=False, comment="alignment run"),
    sa.Column("layer_a", sa.Integer, nullable=False, comment="layer of model A"),
    sa.Column("layer_b", sa.Integer, nullable=False, comment="layer of model B"),
    sa.Column("score", sa.Float, nullable=False,
              comment="layer_a against layer_b by the run's statistic over their vectors' vocabulary correlations"),
    sa.Column("raw_score", sa.Float, nullable=True, comment="the same over raw parameters; NULL if widths differ"),
    sa.Column("matched", sa.Boolean, nullable=False, comment="whether the Hungarian matching pairs the two layers"),
    sa.PrimaryKeyConstraint("alignment_id", "layer_a", "layer_b"),
    comment="The full layer-by-layer similarity matrix of each alignment run, with the matched pairs marked.",
)

neuron_matches = sa.Table(
    "neuron_matches",
    metadata,
    sa.Column("alignment_id", sa.Integer, _ref("alignment_runs.alignment_id"), nullable=False, comment="alignment run"),
    sa.Column("layer_a", sa.Integer, nullable=False, comment="layer of model A"),
    sa.Column("index_a", sa.Integer, nullable=False, comment="neuron (or head) of model A"),
    sa.Column("layer_b", sa.Integer, nullable=False, comment="the layer of B matched to layer_a"),
    sa.Column("index_b", sa.Integer, nullable=False, comment="its best match in layer_b, in embedding space"),
    sa.Column("score", sa.Float, nullable=False,
              comment="their vocabulary correlation, with its sign (the best match has the largest |correlation|)"),
    sa.Column("raw_index_b", sa.Integer, nullable=True, comment="best match over raw parameters (NULL: widths differ)"),
    sa.Column("raw_score", sa.Float, nullable=True, comment="that raw correlation"),
    sa.PrimaryKeyConstraint("alignment_id", "layer_a", "index_a"),
    comment="Each neuron (or head) of A with its best match in the matched layer of B, by vocabulary correlation.",
)

# ---- dictionaries: SAE latents, transcoders, direction sets (issue 20) -----------------------------------------

dictionaries = sa.Table(
    "dictionaries",
    metadata,
    _id("dictionary_id", "dictionary id"),
    sa.Column("checkpoint_id", sa.Integer, _ref("checkpoints.checkpoint_id"),
              nullable=False, comment="the checkpoint whose bases its rows were read with"),
    sa.Column("name", sa.String, nullable=False, comment="its name (--name; default: from its folder)"),
    sa.Column("format", sa.String, nullable=False, comment="saelens, sparsify, gemmascope or directions"),
    sa.Column("architecture", sa.String, nullable=False,
              comment="standard, gated, jumprelu, topk, transcoder… (directions for a direction set)"),
    sa.Column("kind", sa.String, nullable=False, comment="sae, transcoder or directions"),
    sa.Column("hook_in", sa.String, nullable=True, comment="hook point its encoder rows read (NULL: none)"),
    sa.Column("hook_out", sa.String, nullable=True, comment="hook point its decoder rows write (NULL: none)"),
    sa.Column("layer", sa.Integer, nullable=False, comment="the block of its first hook (its vectors' layer)"),
    sa.Column("n_latents", sa.Integer, nullable=False, comment="latents (rows) in the dictionary"),
    sa.Column("d_in", sa.Integer, nullable=False, comment="width of the encoder rows"),
    sa.Column("d_out", sa.Integer, nullable=False, comment="width of the decoder rows"),
    sa.Column("content_hash", sa.String, nullable=False, comment="sha256 of its files: its identity"),
    sa.Column("path", sa.String, nullable=False, comment="where it was read from"),
    sa.Column("source_model", sa.String, nullable=True, comment="the model name its files record, if any"),
    sa.Column("basis", sa.String, nullable=False, comment="folded or raw: the checkpoint's own basis mode"),
    sa.Column("top_k", sa.Integer, nullable=False, comment="tokens kept per vector and side"),
    sa.Column("n_vectors", sa.BigInteger, nullable=False, comment="vectors written (latents × sides read)"),
    sa.Column("n_projections", sa.BigInteger, nullable=False, comment="token rows written"),
    sa.Column("flags", sa.String, nullable=False,
              comment="JSON: each side's hook site (layer, stage, normalized, space), bases, compute, format fields"),
    sa.Column("indexed_at", sa.DateTime, nullable=False, comment="when it was committed"),
    sa.Column("seconds", sa.Float, nullable=False, comment="wall time of the run"),
    sa.UniqueConstraint("checkpoint_id", "name"),
    comment="Dictionaries of directions read through a checkpoint's bases at their hook points: SAEs, "
    "transcoders and direction sets. Their rows are vectors (dictionary_id) like any other.",
)

dictionary_labels = sa.Table(
    "dictionary_labels",
    metadata,
    sa.Column("dictionary_id", sa.Integer, _ref("dictionaries.dictionary_id"),
              nullable=False, comment="dictionary"),
    sa.Column("idx", sa.Integer, nullable=False, comment="row (latent id)"),
    sa.Column("label", sa.String, nullable=False, comment="the label its file gives the row"),
    sa.PrimaryKeyConstraint("dictionary_id", "idx"),
    comment="Labels of direction-set rows, where the set's JSON gives them.",
)
