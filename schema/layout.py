"""Facts about the store that readers need without the table declarations (which import SQLAlchemy): the
schema version this lensdb reads and writes, and which tables are kept sorted by token."""

# Raised with every change to the tables or views; ``schema.migrations`` upgrades older stores step by step.
SCHEMA_VERSION = 8

# Token lookups skip row groups of these tables by their min/max token_id (see ``schema.tables``).
SORTED_BY_TOKEN = ("vector_tokens", "head_pairs")
