"""Two small ASGI middlewares: the API key check and the request body size limit.

Both run before FastAPI reads the body, so an unauthenticated client gets its 401 (not a JSON
error about its body) and an oversized body is refused with 413 without being parsed. They are
plain ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched.
"""

from __future__ import annotations

import hmac

from lyre.serve.errors import APIError

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
    """Refuse request bodies over `max_bytes` with 413, whether or not Content-Length is sent.

    The body is read here (bounded) and replayed to the app, so a chunked upload that grows past
    the limit is refused before the app sees any of it.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> APIError:
        return APIError(413, f"request body is larger than the limit of {self.max_bytes} bytes",
                        code="request_too_large")

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
        while True:
            message = await receive()
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
