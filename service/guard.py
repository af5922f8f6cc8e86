"""Two gates in front of the whole app, as one small ASGI middleware: an optional access token and a cap on
request bodies.

Token (``Settings.token``; off when empty): API clients send ``Authorization: Bearer TOKEN``; a browser
opens any page once with ``?access_token=TOKEN``, which sets an HttpOnly, SameSite=Strict cookie and
redirects to the same URL without it. Anything else is a 401 problem. Bodies above ``max_body_bytes`` are
refused with a 413 problem before the app reads them (a body without Content-Length is buffered up to the
cap, then replayed to the app).
"""

import hmac
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

COOKIE = "lensdb_token"
QUERY = "access_token"

Scope = dict
Message = dict


class Guard:
    def __init__(self, app, token: str = "", max_body_bytes: int = 1 << 20) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token and not self._authorized(headers):
            await self._login_or_refuse(scope, send)
            return
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                await _problem(send, 400, "bad-request", "Bad request", "Content-Length is not a number.")
                return
            if int(length) > self.max_body:
                await self._too_large(send)
                return
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
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
            return {"type": "http.request", "body": body, "more_body": False}

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
            location = scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else "")
            cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            await send({"type": "http.response.start", "status": 303, "headers": [
                (b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode("latin-1")),
                (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await _problem(send, 401, "unauthorized", "Unauthorized",
                       "this lensdb service needs its token: send 'Authorization: Bearer TOKEN', or open a page "
                       f"once with ?{QUERY}=TOKEN.", extra_headers=[(b"www-authenticate", b'Bearer realm="lensdb"')])

    async def _too_large(self, send) -> None:
        await _problem(send, 413, "body-too-large", "Request body too large",
                       f"request bodies are limited to {self.max_body} bytes (setting max_body_bytes).")


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


async def _problem(send, status: int, kind: str, title: str, detail: str,
                   extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"type": f"/problems/{kind}", "title": title, "status": status, "detail": detail}).encode()
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
               *(extra_headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
