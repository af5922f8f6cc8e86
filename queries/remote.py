"""The same ``Lens`` over HTTP: ``queries.connect("http://127.0.0.1:8000")`` asks a running ``lensdb serve`` every
question a ``Lens`` on the file answers, with the same rows and the same errors (problem responses become the
``LensdbError`` subclasses the service made them from). A researcher can keep the browser, a notebook and the
command line open on one store while the service owns it (DuckDB lets no other process read a file while one
writes it).

Standard library only (``http.client``): a read command that goes through the service costs no more imports
than one that opens the file. ``live_service`` is how the command line finds the service: the note
``lens.duckdb.server`` that ``lensdb serve`` writes, trusted only when the service there names the instance the
note names (a note left by a service that died, or a service that owns another file, is ignored).
"""

import http.client
import json
import os
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from pydantic import TypeAdapter

from queries.filters import HitFilter, token_list
from queries.frames import TokenHits, with_frames
from queries.lens import Lens, hit_filter
from queries.readonly import DEFAULT_MAX_BYTES, DEFAULT_RSS_BUDGET_MB, SqlRefused, SqlTimeout, SqlTooLarge
from queries.resolve import Resolution
from queries.rows import (
    Alignment,
    AlignmentInfo,
    ChangedVector,
    ComponentCount,
    HeadRow,
    ModelDetail,
    ModelInfo,
    RunInfo,
    SourceInfo,
    SqlResult,
    StepInfo,
    TokenHit,
    TokenMatch,
    TokenRankStep,
    TraceSummary,
    TraceView,
    VectorPage,
    VectorStep,
    VectorView,
    WarmInfo,
    WatchRunInfo,
)
from schema.connect import noted_service, noted_url
from schema.errors import InvalidFilter, LensdbError, NotFound, StoreError, UnknownToken

if TYPE_CHECKING:
    from queries.integrity import CheckReport

# Problem types the service answers with (service.problems.PROBLEMS) → the error a Lens on the file raises;
# tests/test_lens_both.py checks the two tables agree. Anything else is a LensdbError with the service's detail.
ERRORS: dict[str, type[LensdbError]] = {
    "unknown-token": UnknownToken,
    "invalid-filter": InvalidFilter,
    "not-found": NotFound,
    "sql-refused": SqlRefused,
    "sql-timeout": SqlTimeout,
    "sql-too-large": SqlTooLarge,
    "store-unavailable": StoreError,
}
PAGE = 200  # rows asked for per request: the service's default page_limit
MAX_MATCHES = 1_000_000  # GET /alignments/{id}: the most unit matches one answer holds


@with_frames
class RemoteLens(Lens):
    """A ``Lens`` whose answers come from a running ``lensdb serve`` (see the module docstring). Every public
    method of ``Lens`` is here with the same signature; none of the file's machinery is used."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 300.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LensdbError(f"{url!r} is not a service URL; give one like http://127.0.0.1:8000.")
        self.url = url.rstrip("/")
        self._base = parts.path.rstrip("/")
        self._token = token if token is not None else os.environ.get("LENSDB_TOKEN", "")
        conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._conn = conn_type(parts.hostname, parts.port, timeout=timeout_s)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- transport -------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None}, doseq=True)
        target = self._base + path + (f"?{query}" if query else "")
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        with self._lock:
            for attempt in (1, 2):
                try:
                    self._conn.request(method, target, body=data, headers=headers)
                    response = self._conn.getresponse()
                    status, raw = response.status, response.read()
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    self._conn.close()  # a kept-alive connection the server closed: once more on a new one
                    if attempt == 2:
                        raise StoreError(f"the lensdb service at {self.url} closed the connection.") from None
                except OSError as err:
                    self._conn.close()
                    raise StoreError(f"cannot reach the lensdb service at {self.url}: {err.strerror or err}. "
                                     "Is `lensdb serve` running?") from None
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = None
        if 200 <= status < 300:
            return answer
        raise _error(self.url, status, answer, raw)

    def _get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params)

    def _pages(self, path: str, limit: int, offset: int, **params: Any) -> list[Any]:
        """Up to ``limit`` items from ``offset`` of a list the service hands out a page at a time."""
        out: list[Any] = []
        while len(out) < limit:
            want = min(PAGE, limit - len(out))
            got = self._get(path, limit=want, offset=offset + len(out), **params)
            items = got["items"] if isinstance(got, dict) else got
            out += items
            if len(items) < want or (isinstance(got, dict) and got.get("next_offset") is None):
                break
        return out

    # ---- the questions -----------------------------------------------------------------------------------------

    def warm(self, value_cache_mb: int | None = None) -> WarmInfo:
        """Nothing to do here: the service warms itself (its ``warm`` and ``value_cache_mb`` settings, at start and
        after each index job)."""
        return WarmInfo(vocabularies=0, loaded_vocabularies=0, rows=0, seconds=0.0)

    def tokens(self, token: str | int, model: str | None = None) -> TokenHits[TokenMatch]:
        found = self.resolution(token, model)
        return TokenHits(found.matches, TokenMatch, matches=found.matches, missing=found.missing, token=token)

    def resolution(self, token: str | int, model: str | None = None) -> Resolution:
        found = _rows(list[TokenMatch], self._get("/tokens", model=model, **_token(token)))
        have = {m.model for m in found}
        searched = [model] if model is not None else [m.name for m in self.models() if m.checkpoints]
        return Resolution(token, found, sorted(name for name in searched if name not in have))

    def _hits(self, token: str | int, side: str, f: HitFilter, direction: dict[str, Any] | None = None
              ) -> TokenHits[TokenHit]:
        wanted = f.model_dump(exclude={"limit", "offset"})
        path = "/promoters" if side == "top" else "/suppressors"
        asked = direction if direction is not None else _token(token)
        items: list[Any] = []
        first: dict[str, Any] | None = None
        while len(items) < f.limit:  # _pages, keeping the first page's resolution
            want = min(PAGE, f.limit - len(items))
            got = self._get(path, limit=want, offset=f.offset + len(items), **asked, **wanted)
            first = first or got
            items += got["items"]
            if len(got["items"]) < want or got.get("next_offset") is None:
                break
        assert first is not None
        return TokenHits(_rows(list[TokenHit], items), TokenHit, matches=_rows(list[TokenMatch], first["matches"]),
                         missing=list(first.get("missing", [])), token=token)

    def _search(self, token: "str | int | list[str | int] | None", side: str, filter: HitFilter | None,
                minus: "str | int | list[str | int] | None", text: str | None,
                fields: dict[str, Any]) -> TokenHits[TokenHit]:
        f = hit_filter(filter, fields)
        plus, less = token_list(token), token_list(minus)
        if len(plus) == 1 and not less and text is None:
            return self._hits(plus[0], side, f)
        if any(isinstance(t, int) for t in plus + less):  # GET /promoters names a direction's tokens by word
            raise LensdbError("a direction over the service takes words, not token ids.")
        if not plus and not text:  # the file's messages, before any request
            raise LensdbError("give a token, several tokens, or a text to search for.")
        if plus and text:
            raise LensdbError("give tokens or a text, not both.")
        return self._hits("", side, f, {"tokens": [str(t) for t in plus] or None,
                                        "minus": [str(t) for t in less] or None, "text": text})

    def promoters(self, token: "str | int | list[str | int] | None" = None, filter: HitFilter | None = None, *,
                  minus: "str | int | list[str | int] | None" = None, text: str | None = None,
                  **fields: Any) -> TokenHits[TokenHit]:
        return self._search(token, "top", filter, minus, text, fields)

    def suppressors(self, token: "str | int | list[str | int] | None" = None, filter: HitFilter | None = None, *,
                    minus: "str | int | list[str | int] | None" = None, text: str | None = None,
                    **fields: Any) -> TokenHits[TokenHit]:
        return self._search(token, "bottom", filter, minus, text, fields)

    def vector(self, model: str, component: str, layer: int, index: int, head: int | None = None,
               checkpoint: str | None = None, expert: int | None = None, dictionary: str | None = None) -> VectorView:
        return VectorView.model_validate(self._get(f"/vectors/{_seg(model)}/{_seg(component)}/{layer}/{index}",
                                                   head=head, checkpoint=checkpoint, expert=expert,
                                                   dictionary=dictionary))

    def head_map(self, token: str | int, kind: str = "ov", *, model: str | None = None,
                 checkpoint: str | None = None, limit: int = 20, per_head: int = 5) -> list[HeadRow]:
        if kind not in ("ov", "qk"):  # the file's message, not the service's parameter check
            raise LensdbError(f"kind must be 'ov' or 'qk', not {kind!r}.")
        return _rows(list[HeadRow], self._get("/head-map", kind=kind, model=model, checkpoint=checkpoint, limit=limit,
                                              per_head=per_head, **_token(token)))

    def runs(self, limit: int = 50, offset: int = 0) -> tuple[list[RunInfo], int]:
        got = self._get("/runs", limit=min(limit, PAGE), offset=offset)
        items = got["items"] + (self._pages("/runs", limit - PAGE, offset + PAGE) if limit > PAGE else [])
        return _rows(list[RunInfo], items), int(got["total"])

    def component_counts(self, model: str) -> list[ComponentCount]:
        return self.model(model).components

    def vectors(self, model: str, component: str | None = None, layer: int | None = None, head: int | None = None,
                checkpoint: str | None = None, order: str = "norm", limit: int = 50, offset: int = 0) -> VectorPage:
        return VectorPage.model_validate(self._get(f"/models/{_seg(model)}/vectors", component=component, layer=layer,
                                                   head=head, checkpoint=checkpoint, order=order, limit=limit,
                                                   offset=offset))

    def models(self) -> list[ModelInfo]:
        return _rows(list[ModelInfo], self._pages("/models", 2**31 - 1, 0))

    def model(self, name: str) -> ModelDetail:
        return ModelDetail.model_validate(self._get(f"/models/{_seg(name)}"))

    def steps(self, model: str) -> list[StepInfo]:
        return _rows(list[StepInfo], self._get(f"/models/{_seg(model)}/steps"))

    def drift_vector(self, model: str, component: str, layer: int, index: int, head: int | None = None,
                     k: int = 10, expert: int | None = None, dictionary: str | None = None) -> list[VectorStep]:
        return _rows(list[VectorStep], self._get(f"/drift/{_seg(model)}/{_seg(component)}/{layer}/{index}",
                                                 head=head, k=k, expert=expert, dictionary=dictionary))

    def token_rank_over_training(self, model: str, token: str | int, component: str, layer: int, index: int,
                                 head: int | None = None, side: str = "top", expert: int | None = None
                                 ) -> list[TokenRankStep]:
        return _rows(list[TokenRankStep], self._get(
            f"/drift/{_seg(model)}/{_seg(component)}/{layer}/{index}/rank", head=head, side=side, expert=expert,
            **_token(token)))

    def changed_most(self, model: str, from_checkpoint: str | int, to_checkpoint: str | int,
                     component: str | None = None, limit: int = 20) -> list[ChangedVector]:
        params = {"from": from_checkpoint, "to": to_checkpoint, "component": component, "limit": limit}
        return _rows(list[ChangedVector], self._request("GET", f"/changed/{_seg(model)}", params))

    def registered(self) -> list[SourceInfo]:
        return _rows(list[SourceInfo], self._get("/sources"))

    def watch_runs(self, limit: int = 20, offset: int = 0) -> list[WatchRunInfo]:
        return _rows(list[WatchRunInfo], self._pages("/watch", limit, offset))

    def traces(self, limit: int = 50, offset: int = 0) -> list[TraceSummary]:
        return _rows(list[TraceSummary], self._pages("/traces", limit, offset))

    def trace(self, trace_id: int, position: int | None = None) -> TraceView:
        return TraceView.model_validate(self._get(f"/traces/{trace_id}", position=position))

    def alignments(self, limit: int = 50, offset: int = 0) -> list[AlignmentInfo]:
        return _rows(list[AlignmentInfo], self._pages("/alignments", limit, offset))

    def alignment(self, alignment_id: int, matches: bool = True, layer_a: int | None = None,
                  limit: int | None = None) -> Alignment:
        # the service answers at most MAX_MATCHES unit matches per request (its parameter bound)
        n = (MAX_MATCHES if limit is None else limit) if matches else 0
        return Alignment.model_validate(self._get(f"/alignments/{alignment_id}", layer_a=layer_a, limit=n))

    def sql(self, statement: str, max_rows: int = 1000, timeout_s: float = 10.0,
            max_bytes: int = DEFAULT_MAX_BYTES, rss_budget_mb: int | None = DEFAULT_RSS_BUDGET_MB) -> SqlResult:
        """One read-only SELECT on the service; it caps ``max_rows``, ``timeout_s`` and ``max_bytes`` at its own
        settings, and bounds memory growth by its own setting (``rss_budget_mb`` is the server's to choose)."""
        return SqlResult.model_validate(self._request("POST", "/sql", body={
            "sql": statement, "max_rows": max_rows, "timeout_s": timeout_s, "max_bytes": max_bytes}))

    def check(self) -> "CheckReport":
        from queries.integrity import CheckReport

        return CheckReport.model_validate(self._get("/check"))

    def call(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        """Any request to the service, answered as JSON (errors as above): the command line's writes go through
        here when the service owns the store (``POST /traces``, ``/align``, ``/sources``, ``DELETE /models/…``)."""
        return self._request(method, path, params, body)

    # ---- finding the service ---------------------------------------------------------------------------------

    def serves(self, db: str | os.PathLike[str]) -> bool:
        """Whether this service is the one that noted ``db`` (its ``/health`` names the instance in the note)."""
        noted = noted_service(db)
        try:
            health = self._get("/health")
        except StoreError:
            return False
        return noted is not None and isinstance(health, dict) and health.get("instance") == noted[1] != ""


def live_service(db: str | os.PathLike[str], token: str | None = None) -> RemoteLens | None:
    """A ``RemoteLens`` on the service that owns ``db``, from the note it keeps next to the file; None when there
    is no note or it is stale (nothing answers there, or the service there owns another file). A live service
    that wants a token it was not given is an error that says so."""
    url = noted_url(db)
    if url is None:
        return None
    try:
        lens = RemoteLens(url, token=token, timeout_s=300.0)
    except LensdbError:
        return None
    try:
        if lens.serves(db):
            return lens
    except LensdbError as err:
        lens.close()
        if "token" in str(err):
            raise LensdbError(f"`lensdb serve` owns {db} at {url} and needs its token: pass --token or set "
                              "LENSDB_TOKEN.") from None
        return None
    lens.close()
    return None


def _error(url: str, status: int, answer: Any, raw: bytes) -> LensdbError:
    if isinstance(answer, dict) and "detail" in answer:
        kind = str(answer.get("type", "")).rsplit("/", 1)[-1]
        if status == 401:
            return LensdbError(f"the lensdb service at {url} needs its token ({answer['detail']})")
        return ERRORS.get(kind, LensdbError)(str(answer["detail"]))
    text = raw[:300].decode("utf-8", "replace").strip()
    return LensdbError(f"the lensdb service at {url} answered {status}: {text or 'no details'}")


def _token(token: str | int) -> dict[str, str | int]:
    return {"token_id": token} if isinstance(token, int) else {"token": token}


def _seg(text: str) -> str:
    return quote(text, safe="")


_ADAPTERS: dict[Any, TypeAdapter] = {}


def _rows(kind: Any, data: Any) -> Any:
    adapter = _ADAPTERS.get(kind) or _ADAPTERS.setdefault(kind, TypeAdapter(kind))
    return adapter.validate_python(data)
