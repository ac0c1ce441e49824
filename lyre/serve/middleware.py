"""Three small ASGI middlewares, outermost first: the access log and request metrics, the API
key check, and the request body limits (size and time).

The last two run before FastAPI reads the body, so an unauthenticated client gets its 401 (not a
JSON error about its body), an oversized body is refused with 413 without being parsed, and a
body that never arrives gets 408. They are plain ASGI (not BaseHTTPMiddleware) so streamed
responses pass through untouched, and the access line of a stream is written when it ends.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from lyre.serve.errors import APIError

access_log = logging.getLogger("lyre.serve.access")

PROTECTED_PREFIX = "/v1/"


async def _send_error(send, err: APIError) -> None:
    response = err.response()
    await response({"type": "http"}, _no_receive, send)


async def _no_receive():  # pragma: no cover - JSONResponse never reads the request
    return {"type": "http.disconnect"}


def check_api_key(authorization: str | None, api_key: str) -> APIError | None:
    """None when `authorization` ("Bearer KEY") carries the key, else the 401 to answer."""
    headers = {"WWW-Authenticate": "Bearer"}
    if not authorization:
        return APIError(
            401,
            "missing API key: send it in an Authorization header as `Authorization: Bearer KEY`",
            code="missing_api_key", headers=headers,
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode("utf-8", "replace"), api_key.encode("utf-8")
    ):
        return APIError(401, "incorrect API key provided", code="invalid_api_key", headers=headers)
    return None


class APIKeyMiddleware:
    """Requests under /v1/ need `Authorization: Bearer KEY`; the page, /health and the schema
    stay public (the page asks for the key and sends it with its own requests)."""

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIX) \
                and scope["method"] != "OPTIONS":
            authorization = None
            for name, value in scope.get("headers", []):
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                    break
            err = check_api_key(authorization, self.api_key)
            if err is not None:
                await _send_error(send, err)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, whether or not Content-Length is sent,
    and bodies that have not fully arrived `timeout` seconds after the headers with 408.

    The body is read here (bounded in size and time) and replayed to the app, so a chunked
    upload that grows past the limit is refused before the app sees any of it, and a client that
    sends headers and then nothing (or a byte now and then) cannot hold a connection forever.
    """

    def __init__(self, app, max_bytes: int, timeout: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    def _too_large(self) -> APIError:
        return APIError(413, f"request body is larger than the limit of {self.max_bytes} bytes",
                        code="request_too_large")

    def _too_slow(self) -> APIError:
        # Connection: close, as the rest of the body may still come: the connection is done.
        return APIError(408, f"the request body did not arrive within {self.timeout:g} s",
                        code="request_timeout", headers={"Connection": "close"})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, APIError(400, "invalid Content-Length header"))
                    return
                if declared > self.max_bytes:
                    await _send_error(send, self._too_large())
                    return
        chunks: list[bytes] = []
        size = 0
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                message = await asyncio.wait_for(receive(), left)
            except TimeoutError:
                await _send_error(send, self._too_slow())
                return
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _send_error(send, self._too_large())
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class AccessMiddleware:
    """One access-log line (logger lyre.serve.access, INFO) and the request metrics for every
    HTTP request, written when its response has been sent completely (streams included)::

        127.0.0.1:50412 - "POST /v1/chat/completions HTTP/1.1" 200 1.284s

    The metrics' `route` label is the route's template (/v1/models/{model}), a mount's prefix
    (/static) or "other", never the raw path, so arbitrary URLs cannot grow the number of time
    series. `routes` are the app's routes (APIRoute: .path, .path_regex), `mounts` its prefixes.
    """

    def __init__(self, app, metrics, routes=(), mounts: tuple[str, ...] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = [(route.path_regex, route.path) for route in routes]
        self.mounts = mounts

    def route_of(self, path: str) -> str:
        for regex, template in self.routes:
            if regex.match(path):
                return template
        return next((m for m in self.mounts if path.startswith(m + "/")), "other")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope["lyre.start"] = start  # the routes time the first token from here
        status = 500  # what the client gets if the app fails before answering

        async def send_and_watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            seconds = time.perf_counter() - start
            self.metrics.observe_request(self.route_of(scope["path"]), scope["method"], status, seconds)
            _log_access(scope, status, seconds)


def _log_access(scope, status: int, seconds: float) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    who = f"{client[0]}:{client[1]}" if client else "-"
    query = scope.get("query_string", b"").decode("latin-1")
    target = scope["path"] + (f"?{query}" if query else "")
    access_log.info('%s - "%s %s HTTP/%s" %d %.3fs', who, scope["method"], target,
                    scope.get("http_version", "1.1"), status, seconds)
