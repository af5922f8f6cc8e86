"""Schemathesis against the service's own OpenAPI schema, in-process (ASGI): no input gives a 500.

Every operation gets a bounded number of generated requests (derandomized, so CI sees the same ones); index
jobs the fuzzer submits must fail as clean errors, never as internal ones.
"""

import shutil
import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from service.app import create_app
from service.settings import Settings

EXAMPLES = 40


@pytest.fixture
def app(indexed_store: Path, tmp_path: Path):
    """A service on a copy of the store; one per test (schemathesis' client shuts the app down when done)."""
    db = tmp_path / "lens.duckdb"
    shutil.copy(indexed_store, db)
    app = create_app(Settings(db=db, sql_timeout_s=1.0, allowed_host=["testserver"]))  # the ASGI client's name
    yield app
    app.state.owner.close()


def test_no_request_makes_a_server_error(app) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    failures: list[str] = []
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case) -> None:
            try:
                response = case.call()
            except Exception as err:  # the ASGI test client re-raises what the app raised
                failures.append(f"{case.method} {case.path} {case.path_parameters} {case.query} {case.body!r}: {err!r}")
                return
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} {case.path_parameters} {case.query} {case.body!r}: "
                                f"{response.status_code} {response.text[:200]}")

        call()
    assert not failures, "\n".join(failures[:20])
    jobs = app.state.owner.jobs
    deadline = time.monotonic() + 60
    while any(j.status in ("queued", "running") for j in jobs.all()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    internal = [j.error for j in jobs.all() if (j.error or "").startswith("internal error")]
    assert not internal, internal[:5]


@pytest.mark.parametrize("url", [
    f"/watch?offset={2**63}",  # found by schemathesis: a 500 (DuckDB could not convert the offset to int64)
    f"/runs?offset={2**40}",
    f"/promoters?token_id={2**63}",
    f"/vectors/gpt2-tiny/ff_value/{2**63}/0",
    f"/drift/gpt2-tiny/ff_value/0/{2**64}",
])
def test_huge_integers_are_the_callers_mistake(app, url: str) -> None:
    from fastapi.testclient import TestClient

    r = TestClient(app, raise_server_exceptions=True).get(url)  # no `with`: its shutdown would close the store
    assert r.status_code in (404, 422), r.text
    assert r.headers["content-type"].startswith("application/problem+json")
