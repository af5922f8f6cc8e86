"""Errors as HTTP answers, in one place: every ``LensdbError`` subclass maps to a problem type (RFC 9457) with
a title and a status; validation, routing and out-of-range errors get theirs too."""

from http import HTTPStatus

import duckdb
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from queries import SqlRefused, SqlTimeout
from schema.errors import LensdbError, NotFound, StoreError, UnknownToken

# A stable id per kind of error, a title, an HTTP status; the first class that matches wins.
PROBLEMS: list[tuple[type[LensdbError], int, str, str]] = [
    (UnknownToken, 404, "unknown-token", "Token not found"),
    (NotFound, 404, "not-found", "Not found"),
    (SqlRefused, 400, "sql-refused", "SQL refused"),
    (SqlTimeout, 408, "sql-timeout", "SQL query timed out"),
    (StoreError, 503, "store-unavailable", "Store unavailable"),
    (LensdbError, 400, "bad-request", "Bad request"),
]


def problem(status: int, kind: str, title: str, detail: str, **extra: object) -> JSONResponse:
    body = {"type": f"/problems/{kind}", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def classify(err: LensdbError) -> tuple[int, str, str]:
    """(status, problem type, title) of an error."""
    for cls, status, kind, title in PROBLEMS:
        if isinstance(err, cls):
            return status, kind, title
    raise AssertionError("LensdbError is last in PROBLEMS")


def install(app: FastAPI) -> None:
    """Answer every error the app can raise as a problem response."""

    @app.exception_handler(LensdbError)
    def lensdb_error(request: Request, err: LensdbError) -> JSONResponse:
        status, kind, title = classify(err)
        return problem(status, kind, title, str(err))

    @app.exception_handler(duckdb.DataError)
    def out_of_range(request: Request, err: duckdb.DataError) -> JSONResponse:
        # A number too large for the store's integer columns (a layer, index, head or token id beyond int64)
        # reaches DuckDB as a parameter it cannot convert: the caller's mistake, not the server's.
        return problem(422, "invalid-parameters", "Invalid parameters",
                       f"a parameter is out of range for the store: {' '.join(str(err).split())}")

    @app.exception_handler(duckdb.OutOfMemoryException)
    def out_of_memory(request: Request, err: duckdb.OutOfMemoryException) -> JSONResponse:
        # Another request holds the store's memory (setting memory_limit) for a moment: busy, not broken.
        return problem(503, "out-of-memory", "Out of memory", "the service's DuckDB memory (setting memory_limit) "
                       "is taken by other requests right now; retry shortly.")

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in err.errors()]
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return problem(422, "invalid-parameters", "Invalid parameters", detail, errors=errors)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, err: HTTPException) -> JSONResponse:
        title = HTTPStatus(err.status_code).phrase
        detail = err.detail if err.status_code != 404 else f"no such path {request.url.path}; see /docs."
        return problem(err.status_code, title.lower().replace(" ", "-"), title, str(detail))
