"""Issue 22: user SQL by allow-list. The hostile corpus (tests/hostile_sql.py, several hundred statements by
class) is refused by the checker alone, on a connection with no hardening at all, and then through `lensdb sql`
and `POST /sql`; SELECTs the allow-list accepts stay within their time, byte and memory limits; what users
do with the store keeps working. Real store files, the CLI in-process, the app through httpx.ASGITransport.
"""

import asyncio
import contextlib
import io
import json
import time
from pathlib import Path

import duckdb
import httpx
import pytest
from hostile_sql import ALLOWED, BOUNDED, REFUSED

from queries import SqlRefused, SqlTimeout, connect
from queries.allowlist import FUNCTIONS, OPERATORS, TABLE_FUNCTIONS
from queries.readonly import MAX_SQL_CHARS, SqlTooLarge, check_statement
from schema.errors import LensdbError
from service.app import create_app
from service.cli import main
from service.settings import Settings
from tests.test_bad_input import snapshot

HOSTILE = [(cls, stmt) for cls, stmts in REFUSED.items() for stmt in stmts]


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_the_corpus_is_several_hundred_statements_by_class() -> None:
    sizes = {cls: len(stmts) for cls, stmts in REFUSED.items()}
    print("hostile corpus:", sizes, "bounded:", len(BOUNDED), "allowed:", len(ALLOWED))
    assert sum(sizes.values()) >= 400 and all(n >= 5 for n in sizes.values()), sizes


def test_the_allow_list_names_only_duckdb_functions_and_none_that_reach_outside() -> None:
    con = duckdb.connect()
    known = {r[0].lower() for r in con.execute("SELECT function_name FROM duckdb_functions()").fetchall()}
    # names the binder knows without duckdb_functions() listing them: SQL's value functions and the JSON arrow
    special = {"current_time", "current_timestamp", "localtime", "localtimestamp", "->>"}
    assert sorted((FUNCTIONS | TABLE_FUNCTIONS) - known - special - OPERATORS) == []
    outside = {"read_csv", "read_text", "glob", "query", "query_table", "current_setting", "enable_logging",
               "duckdb_settings", "write_log", "getvariable", "repeat", "lpad", "printf", "format", "sleep_ms",
               "json_serialize_plan", "list_aggregate", "list_transform", "nextval", "setseed", "version"}
    assert sorted(outside & (FUNCTIONS | TABLE_FUNCTIONS)) == []


def test_every_hostile_statement_is_refused_by_the_checker_alone(store_copy: Path) -> None:
    """No hardening here (a plain read-only connection): the allow-list itself refuses, without running."""
    con = duckdb.connect(str(store_copy), read_only=True)
    accepted = []
    started = time.perf_counter()
    for cls, stmt in HOSTILE:
        try:
            check_statement(con, stmt)
        except SqlRefused as err:
            assert str(err) and "\n" not in str(err), (cls, stmt, err)
        else:
            accepted.append((cls, stmt[:100]))
    con.close()
    assert accepted == []
    assert time.perf_counter() - started < 30


def test_what_users_ask_keeps_working(store_copy: Path) -> None:
    with connect(store_copy) as lens:
        for stmt in ALLOWED:
            result = lens.sql(stmt)
            assert result.columns, stmt
            json.dumps(result.rows)  # JSON-ready values: dates as text, blobs as hex
        for stmt, _ in BOUNDED:
            check_statement(lens.con, stmt)  # accepted: the limits, not the checker, stop these


def test_hostile_corpus_through_python_and_the_cli(store_copy: Path) -> None:
    """All of it through ``Lens.sql`` (what `lensdb sql` calls); through `lensdb sql` itself every class in full
    where the command line adds something (text, splitting, depth) and every fifth statement of the others
    (each run opens the store: ~50 ms)."""
    before = snapshot(store_copy)
    with connect(store_copy) as lens:
        for _, stmt in HOSTILE:
            with pytest.raises(SqlRefused):
                lens.sql(stmt, timeout_s=1)
    sample = [(c, s) for c, stmts in REFUSED.items() for i, s in enumerate(stmts)
              if c in ("bad-text", "splitting", "depth") or i % 5 == 0]
    assert len(sample) >= 100
    for cls, stmt in sample:
        code, out, err = cli("sql", stmt, "--db", str(store_copy), "--timeout", "1")
        assert code in (1, 2 if cls == "bad-text" else 1), (cls, stmt, err)  # 2: an argument that is not UTF-8
        assert out == "" and err.startswith("lensdb: error: ") and err.count("\n") == 1, (cls, stmt, err)
    for stmt, stop in BOUNDED:
        started = time.perf_counter()
        code, out, err = cli("sql", stmt, "--db", str(store_copy), "--timeout", "1", "--max-bytes", "100000",
                             "--max-rows", "1000000")
        assert time.perf_counter() - started < 15, stmt[:80]
        if stop == "bytes":
            assert code == 0 and "truncated at 100000 bytes" in err, (stmt[:80], err)
        else:
            assert code == 1 and err.count("\n") == 1 and ("ran longer than 1s" in err or "memory" in err), err
    assert snapshot(store_copy) == before


def test_hostile_corpus_through_http(store_copy: Path) -> None:
    before = snapshot(store_copy)
    app = create_app(Settings(db=store_copy, sql_timeout_s=1.0, sql_max_bytes=100_000, sql_max_rows=1_000_000,
                              sql_rss_budget_mb=256,
                              warm=False))

    def body(stmt: str) -> bytes:  # ASCII JSON: lone surrogates travel as \ud800 escapes, as a client may send
        return json.dumps({"sql": stmt}).encode()

    async def run_all() -> list[tuple[str, str, httpx.Response]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost",
                                     headers={"content-type": "application/json"}) as c:
            answers = [(cls, stmt, await c.post("/sql", content=body(stmt))) for cls, stmt in HOSTILE]
            answers += [(stop, stmt, await c.post("/sql", content=body(stmt))) for stmt, stop in BOUNDED]
            answers.append(("health", "", await c.get("/health")))
            return answers

    try:
        answers = asyncio.run(run_all())
    finally:
        app.state.owner.close()
    assert answers.pop()[2].status_code == 200  # still answering
    for cls, stmt, r in answers:
        if cls == "bytes":
            body = r.json()
            assert r.status_code == 200 and body["truncated_by"] == "bytes" and len(r.content) <= 100_000 + 200
            continue
        assert r.headers["content-type"].startswith("application/problem+json"), (cls, stmt[:80], r.text[:200])
        problem = r.json()
        if cls in ("time", "memory-or-time"):
            assert r.status_code in (408, 400) and problem["type"] in ("/problems/sql-timeout",
                                                                       "/problems/sql-too-large"), problem
        else:
            assert (r.status_code, problem["type"]) == (400, "/problems/sql-refused"), (cls, stmt[:80], problem)
        assert "\n" not in problem["detail"] and len(problem["detail"]) <= 2000
    assert snapshot(store_copy) == before


def test_the_answer_is_bounded_in_bytes_inside_the_time_limit(store_copy: Path) -> None:
    """Twenty 30 kB strings against a 100 kB cap: cut after three rows, encoded, well inside the limit."""
    stmt = "SELECT '" + "z" * 30_000 + "' AS s, range AS i FROM range(20)"
    with connect(store_copy) as lens:
        started = time.perf_counter()
        r = lens.sql(stmt, max_rows=1000, timeout_s=5, max_bytes=100_000)
        assert time.perf_counter() - started < 5
        assert r.truncated and r.truncated_by == "bytes" and len(r.rows) == 3
        assert len(r.model_dump_json()) <= 100_000 + 200
        with pytest.raises(SqlTooLarge, match="first row alone"):
            lens.sql(stmt, max_bytes=1000)
        assert lens.sql("SELECT * FROM range(10)", max_rows=3).truncated_by == "rows"


def test_memory_growth_stops_a_query(store_copy: Path) -> None:
    """string_agg builds one value outside DuckDB's memory limit; the process's growth stops it."""
    stmt = "SELECT string_agg('" + "x" * 1000 + "', '') FROM range(100000000000)"
    with connect(store_copy) as lens:
        started = time.perf_counter()
        with pytest.raises(SqlTooLarge, match="more than 64 MiB"):
            lens.sql(stmt, timeout_s=60, rss_budget_mb=64)
        assert time.perf_counter() - started < 30
        with pytest.raises(SqlTimeout):
            lens.sql(stmt, timeout_s=0.3, rss_budget_mb=None)
        assert lens.sql("SELECT 42").rows == [[42]]


@pytest.mark.parametrize("limits", [
    {"max_rows": -1}, {"max_rows": 0}, {"max_rows": 10**20}, {"max_rows": True}, {"max_rows": 1.5},
    {"timeout_s": float("inf")}, {"timeout_s": float("nan")}, {"timeout_s": 0}, {"timeout_s": -1},
    {"timeout_s": 10**9}, {"max_bytes": 0}, {"max_bytes": -5}, {"max_bytes": 2**40},
])
def test_limits_must_be_numbers_in_range(store_copy: Path, limits: dict) -> None:
    with connect(store_copy) as lens, pytest.raises(LensdbError, match="limit must be"):
        lens.sql("SELECT 1", **limits)


def test_the_statement_length_is_capped(store_copy: Path) -> None:
    with connect(store_copy) as lens, pytest.raises(SqlRefused, match="characters long"):
        lens.sql("SELECT 1 -- " + "x" * MAX_SQL_CHARS)
