"""Errors as HTTP answers, in one place: every ``LensdbError`` subclass maps to a problem type (RFC 9457) with
a title and a status; validation, routing, out-of-range, too-deep, bad-text, disk and database errors get
theirs too. A detail is one line of at most ``MAX_DETAIL`` characters and never an exception's repr; what is
not a lensdb error is told only by its kind, with the whole story in the server log."""

import logging
from http import HTTPStatus

import duckdb
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from queries import SqlRefused, SqlTimeout
from queries.readonly import SqlTooLarge
from schema.errors import LensdbError, NotFound, StoreError, UnknownToken
from service.allowed import Forbidden
from service.pools import Busy

MAX_DETAIL = 2000
log = logging.getLogger("lensdb.service")

# A stable id per kind of error, a title, an HTTP status; the first class that matches wins.
PROBLEMS: list[tuple[type[LensdbError], int, str, str]] = [
    (UnknownToken, 404, "unknown-token", "Token not found"),
    (NotFound, 404, "not-found", "Not found"),
    (SqlRefused, 400, "sql-refused", "SQL refused"),
    (SqlTimeout, 408, "sql-timeout", "SQL query timed out"),
    (SqlTooLarge, 400, "sql-too-large", "SQL answer too large"),
    (Forbidden, 403, "path-not-allowed", "Path not allowed"),
    (Busy, 503, "busy", "Service busy"),
    (StoreError, 503, "store-unavailable", "Store unavailable"),
    (LensdbError, 400, "bad-request", "Bad request"),
]


def problem(status: int, kind: str, title: str, detail: str, headers: dict[str, str] | None = None,
            **extra: object) -> JSONResponse:
    flat = " ".join(detail.split())
    flat = flat if len(flat) <= MAX_DETAIL else flat[: MAX_DETAIL - 1] + "…"
    body = {"type": f"/problems/{kind}", "title": title, "status": status, "detail": flat, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


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
        headers = {"retry-after": str(err.retry_after)} if isinstance(err, Busy) else None
        return problem(status, kind, title, str(err), headers=headers)

    @app.exception_handler(RecursionError)
    def too_deep(request: Request, err: RecursionError) -> JSONResponse:
        return problem(422, "too-deep", "Input nested too deeply",
                       "the request is nested too deeply to read (JSON arrays or objects inside each other); "
                       "flatten it.")

    @app.exception_handler(UnicodeError)
    def bad_text(request: Request, err: UnicodeError) -> JSONResponse:
        return problem(422, "invalid-text", "Invalid text",
                       "a text value is not valid Unicode (a lone surrogate such as \\ud800); send UTF-8 text.")

    @app.exception_handler(duckdb.Error)
    def database_error(request: Request, err: duckdb.Error) -> JSONResponse:
        log.error("database error on %s %s", request.method, request.url.path, exc_info=err)
        full = "space left" in str(err) or "disk" in str(err).lower()
        return problem(503, "store-error", "Store error", "the store could not complete the request"
                       + ("; the disk is full" if full else "") + "; the server log has the details.",
                       headers={"retry-after": "5"})

    @app.exception_handler(OSError)
    def io_error(request: Request, err: OSError) -> JSONResponse:
        log.error("I/O error on %s %s", request.method, request.url.path, exc_info=err)
        reason = err.strerror or type(err).__name__
        return problem(503, "io-error", "I/O error", f"the server could not read or write a file ({reason}); the "
                       "server log has the details.", headers={"retry-after": "5"})

    @app.exception_handler(MemoryError)
    def out_of_memory(request: Request, err: MemoryError) -> JSONResponse:
        return problem(503, "out-of-memory", "Out of memory", "the request needed more memory than the server "
                       "has; ask for less.", headers={"retry-after": "5"})

    @app.exception_handler(Exception)
    def internal(request: Request, err: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=err)
        return problem(500, "internal-error", "Internal error", f"unexpected {type(err).__name__}; the server "
                       "log has the details.")

    @app.exception_handler(duckdb.DataError)
    def out_of_range(request: Request, err: duckdb.DataError) -> JSONResponse:  # before duckdb.Error: more specific
        # A number too large for the store's integer columns (a layer, index, head or token id beyond int64)
        # reaches DuckDB as a parameter it cannot convert: the caller's mistake, not the server's.
        return problem(422, "invalid-parameters", "Invalid parameters",
                       f"a parameter is out of range for the store: {' '.join(str(err).split())}")

    @app.exception_handler(duckdb.OutOfMemoryException)
    def duckdb_out_of_memory(request: Request, err: duckdb.OutOfMemoryException) -> JSONResponse:
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
