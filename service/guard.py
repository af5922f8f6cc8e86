"""The gates in front of the whole app, as one small ASGI middleware: the Host header, an optional access token,
a cap on request bodies, and the security headers on every response.

Host (``Settings.allowed_host``; loopback names when listening on loopback): any other name is a 400 problem,
so a page on another site cannot reach a token-less loopback service through DNS rebinding.

Token (``Settings.token``; off when empty): API clients send ``Authorization: Bearer TOKEN``; a browser
opens any page once with ``?access_token=TOKEN``, which sets an HttpOnly, SameSite=Strict cookie and
redirects to the same path on this server (never elsewhere: ``//evil.example`` stays a local path). Anything
else is a 401 problem.

Bodies: counted as they are read, whatever the headers say (``Content-Length`` or chunked, or both); past
``max_body_bytes`` the request is refused with a 413 problem before the app sees any of it, and the app gets
the body it would have read, replayed.

Headers: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer`` and,
where a response has no policy of its own (pages set theirs), ``Content-Security-Policy: frame-ancestors
'none'``.
"""

import hmac
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, quote, urlencode

COOKIE = "lensdb_token"
QUERY = "access_token"
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
           (b"referrer-policy", b"no-referrer")]
FRAMES = (b"content-security-policy", b"frame-ancestors 'none'")

Scope = dict
Message = dict


class Guard:
    def __init__(self, app, token: str = "", max_body_bytes: int = 1 << 20,
                 hosts: frozenset[str] | None = None) -> None:
        """``hosts``: Host header names accepted (lower case, without port); None accepts any."""
        self.app = app
        self.token = token
        self.max_body = max_body_bytes
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.hosts is not None and host_name(headers.get("host", "")) not in self.hosts:
            await _problem(send, 400, "host-not-allowed", "Host not allowed",
                           "this lensdb service does not answer to that Host name; use its address, or add the "
                           "name with --allowed-host.")
            return
        if self.token and not self._authorized(headers):
            await self._login_or_refuse(scope, send)
            return
        length = headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                await _problem(send, 400, "bad-request", "Bad request", "Content-Length is not a number.")
                return
            if int(length) > self.max_body:
                await self._too_large(send)
                return
        body, more = bytearray(), True
        while more:  # counted as read: a Content-Length that lies, or chunks, change nothing
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                await self._too_large(send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and _same(auth[7:].strip(), self.token):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is simply not a login
            return False
        return COOKIE in cookie and _same(cookie[COOKIE].value, self.token)

    async def _login_or_refuse(self, scope: Scope, send) -> None:
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == QUERY]
        if scope["method"] == "GET" and given and _same(given[0], self.token):
            rest = urlencode([(k, v) for k, v in query if k != QUERY])
            location = local_path(scope.get("root_path", "") + scope["path"]) + (f"?{rest}" if rest else "")
            cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            await send({"type": "http.response.start", "status": 303, "headers": [
                (b"location", location.encode("ascii")), (b"set-cookie", cookie.encode("latin-1")),
                (b"cache-control", b"no-store"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await _problem(send, 401, "unauthorized", "Unauthorized",
                       "this lensdb service needs its token: send 'Authorization: Bearer TOKEN', or open a page "
                       f"once with ?{QUERY}=TOKEN.", extra_headers=[(b"www-authenticate", b'Bearer realm="lensdb"')])

    async def _too_large(self, send) -> None:
        await _problem(send, 413, "body-too-large", "Request body too large",
                       f"request bodies are limited to {self.max_body} bytes (setting max_body_bytes).")


def host_name(host: str) -> str:
    """The name part of a Host header, lower case: ``[::1]:8000`` → ``::1``, ``Localhost.:80`` → ``localhost``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0].rstrip(".") if host.count(":") == 1 else host.rstrip(".")


def local_path(path: str) -> str:
    """``path`` as a path on this server, percent-encoded: one leading slash, so ``//evil.example/x`` or
    ``/\\evil.example`` can never be read by a browser as another host."""
    return quote("/" + path.lstrip("/\\"), safe="/:@!$&'()*+,;=-._~")


def _with_headers(send):
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            names = {k.lower() for k, _ in headers}
            headers += [h for h in HEADERS if h[0] not in names]
            if FRAMES[0] not in names:
                headers.append(FRAMES)
            message = {**message, "headers": headers}
        await send(message)

    return sending


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


async def _problem(send, status: int, kind: str, title: str, detail: str,
                   extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"type": f"/problems/{kind}", "title": title, "status": status, "detail": detail}).encode()
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
               *(extra_headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
