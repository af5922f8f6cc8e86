"""The store: what it holds (tables, views, comments), which version it is, how it is upgraded, and every write.

Owns: the declarations (``tables``, ``views``; references between tables are declared there), the schema
version and its ordered ``migrations``, the DDL compiled from the declarations (``ddl``), every write
(``writer``: the Store every writer goes through, inserts by column name), ids that are never reused (``ids``),
deletes along the declared references (``deletes``: ``--replace``, ``forget``), ``optimize``, and the errors
every layer shows users (``errors``).

May import: duckdb, pyarrow, and SQLAlchemy/duckdb_engine for the declarations and their DDL. Nothing from
``indexer``, ``queries`` or ``service``. The read side (``connect``, ``layout``, ``errors``) imports duckdb and
the standard library only, so a reader never pays for SQLAlchemy.
"""
