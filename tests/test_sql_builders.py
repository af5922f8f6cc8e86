"""The SQL builders as values: no connection needed to check what they build."""

import duckdb
import pytest

from queries import sql as q


@pytest.mark.parametrize("value, expected", [
    (None, "NULL"), (True, "TRUE"), (7, "7"), (-3, "-3"), (0.5, "'0.5'::DOUBLE"),
    ("paris", "'paris'"), ("it's", "'it''s'"), ("a?b", "'a?b'"), ("", "''"),
    ("\x00", None), (float("nan"), "'nan'::DOUBLE"), (-float("inf"), "'-inf'::DOUBLE"), (b"bytes", None),
])
def test_literal(value: object, expected: str | None) -> None:
    assert q.literal(value) == expected


def test_inline_gives_the_same_answer_as_binding() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (s VARCHAR, n INTEGER)")
    con.execute("INSERT INTO t VALUES ('it''s', 1), ('a?b', 2), ('x', NULL), ('\\\\'';--', 4)")
    for word in ("it's", "a?b", "x", "\\\\';--", "nope"):
        built = ("SELECT n FROM t WHERE s = ? AND coalesce(n, 0) < ? ORDER BY n", [word, 10])
        sql, params = q.inline(built)
        assert params == [] and "?" not in sql.replace("'a?b'", "")
        assert con.execute(sql).fetchall() == con.execute(*built).fetchall()


def test_an_inlined_float_compares_as_a_bound_one() -> None:
    """A REAL compared with the float it was read as: bound, the float is a DOUBLE and equal; written as a bare
    literal it was a DECIMAL (the shortest decimal that round-trips), which the REAL's binary value exceeds."""
    con = duckdb.connect()
    con.execute("CREATE TABLE v (z REAL)")
    con.execute("INSERT INTO v SELECT (i / 7.0 + 0.1)::REAL FROM range(200) t(i)")
    for (z,) in con.execute("SELECT z FROM v").fetchall():
        built = ("SELECT count(*) FROM v WHERE z > ?", [z])
        assert con.execute(*q.inline(built)).fetchall() == con.execute(*built).fetchall(), z
    for bound in (float("inf"), -float("inf")):
        built = ("SELECT count(*) FROM v WHERE z < ?", [bound])
        assert q.inline(built)[1] == [] and con.execute(*q.inline(built)).fetchall() == con.execute(*built).fetchall()


def test_inline_keeps_binding_when_a_value_cannot_be_written() -> None:
    built = ("SELECT ?, ?", ["ok", "\x00"])
    assert q.inline(built) == built
    mismatched = ("SELECT ?", [1, 2])
    assert q.inline(mismatched) == mismatched


def test_hits_in_ranges_fetches_each_token_by_equality() -> None:
    sql, params = q.hits_in_ranges([([(1, 10), (20, 30)], [5, 7])], "top", limit=3, offset=1)
    assert sql.count("FROM vector_tokens WHERE token_id = ?") == 2 and "MATERIALIZED" in sql
    assert params == [5, 5, 7, 7, "top", 1, 10, 20, 30, 5, 7, 3, 1]
    sql, params = q.hits_in_ranges([([(1, 10)], [5])], "bottom")
    assert sql.count("FROM vector_tokens WHERE token_id = ?") == sql.count("FROM head_pairs WHERE token_id = ?") == 1
    assert params[:3] == [5, 5, "bottom"]
    with pytest.raises(Exception, match="side must be"):
        q.hits_in_ranges([([(1, 2)], [5])], "middle")
