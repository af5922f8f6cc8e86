"""The DDL of the declared schema, compiled from ``schema.tables`` and ``schema.views``: writers only."""

from duckdb_engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from schema.connect import quote
from schema.tables import metadata
from schema.views import VIEWS

_DIALECT = Dialect()


def table_ddl(comments: bool = True) -> list[str]:
    """Every statement that creates the declared tables, their indexes and (``comments``) comments; idempotent.
    An upgrade comments after its migrations, once the columns they add exist (``comment_ddl``)."""
    stmts: list[str] = []
    for table in metadata.sorted_tables:
        # references are declared, not created: DuckDB's foreign keys cannot cascade and index every bulk load
        # (schema.tables); schema.deletes follows them instead
        create = CreateTable(table, if_not_exists=True, include_foreign_key_constraints=())
        stmts.append(str(create.compile(dialect=_DIALECT)).strip())
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            stmts.append(str(CreateIndex(index, if_not_exists=True).compile(dialect=_DIALECT)).strip())
    return stmts + (comment_ddl() if comments else [])


def comment_ddl() -> list[str]:
    """The comments of every declared table and column (after a migration has added the columns)."""
    stmts: list[str] = []
    for table in metadata.sorted_tables:
        if table.comment:
            stmts.append(f"COMMENT ON TABLE {table.name} IS {quote(table.comment)}")
        for col in table.columns:
            if col.comment:
                stmts.append(f'COMMENT ON COLUMN {table.name}."{col.name}" IS {quote(col.comment)}')
    return stmts


def view_ddl() -> list[str]:
    """Every statement that (re)creates the views with their comments; idempotent."""
    stmts: list[str] = []
    for view in VIEWS:
        stmts.append(f"CREATE OR REPLACE VIEW {view.name} AS {view.sql.strip()}")
        stmts.append(f"COMMENT ON VIEW {view.name} IS {quote(view.doc)}")
    return stmts


def schema_ddl() -> list[str]:
    """The whole schema: tables first, then the views over them."""
    return table_ddl() + view_ddl()
