"""The store's declared schema against a real DuckDB file; its documentation against the README."""

from pathlib import Path

import duckdb

from schema.ddl import schema_ddl
from schema.tables import metadata
from schema.views import VIEWS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_schema_creates_every_table_and_view_with_comments(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "s.duckdb"))
    for stmt in schema_ddl():
        con.execute(stmt)
    for stmt in schema_ddl():  # idempotent
        con.execute(stmt)
    tables = dict(con.execute("SELECT table_name, comment FROM duckdb_tables()").fetchall())
    views = dict(con.execute("SELECT view_name, comment FROM duckdb_views() WHERE NOT internal").fetchall())
    assert set(tables) == {t.name for t in metadata.sorted_tables}
    assert set(views) == {v.name for v in VIEWS}
    assert all(tables.values()) and all(views.values())
    con.close()


def test_every_view_and_table_is_documented_in_the_readme() -> None:
    text = README.read_text()
    for name in [v.name for v in VIEWS] + [t.name for t in metadata.sorted_tables if t.name != "lensdb_meta"]:
        assert f"`{name}`" in text, f"README does not document {name}"


def test_every_view_column_has_a_comment(store_copy: Path) -> None:
    """The README says every column has a comment: views' columns too, in a store the writer made or upgraded
    (upgrade_store rewrites comments and views) and in one `lensdb optimize` rewrote."""
    from schema.optimize import optimize
    from schema.writer import upgrade_store

    upgrade_store(store_copy)
    optimize(store_copy)
    con = duckdb.connect(str(store_copy), read_only=True)
    rows = con.execute("SELECT table_name, column_name, comment FROM duckdb_columns() "
                       "WHERE table_name IN (SELECT view_name FROM duckdb_views() WHERE NOT internal)").fetchall()
    con.close()
    assert {r[0] for r in rows} == {v.name for v in VIEWS}
    assert [f"{t}.{c}" for t, c, comment in rows if not comment] == []
