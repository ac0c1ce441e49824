"""Errors in OpenAI's JSON shape, and the handlers that make every failure one of them.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "top_p", "code": null}}

Bad input is always a 4xx: malformed JSON and schema violations are 400 (FastAPI's default 422
is remapped), an unknown model 404, a missing or wrong API key 401, a body over the size limit
413, a full queue 429 and a server shutting down 503 (both with Retry-After). A 500 means a bug
in lyre, never a bad request.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lyre.errors import LyreError

log = logging.getLogger("lyre.serve")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "overloaded_error",
}


class APIError(Exception):
    """An error answered to the client as {"error": {...}} with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_response(status: int, message: str, **kw) -> JSONResponse:
    return APIError(status, message, **kw).response()


def _loc_to_param(loc) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # pydantic names the union member it tried ("str", "list[int]", ...) in the location; the
    # field path is what the client needs.
    parts = [p for p in parts if not (p[:1].islower() and ("[" in p or p in ("str", "int", "float", "bool", "function-after")))]
    return ".".join(parts) or None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None, None
    # A body that is not JSON at all: say so first.
    for err in errors:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            detail = ctx.get("error", "")
            return f"the request body is not valid JSON ({detail})".replace(" ()", ""), None, "invalid_json"
    err = errors[0]
    param = _loc_to_param(err.get("loc", ()))
    kind = err.get("type", "")
    if kind == "missing":
        return f"missing required parameter: {param!r}", param, "missing_required_parameter"
    if kind == "extra_forbidden":
        return f"unrecognized request argument: {param!r}", param, "unknown_parameter"
    msg = err.get("msg", "invalid value")
    if kind == "model_attributes_type" or param is None:
        return f"invalid request body: {msg}", param, "invalid_request"
    return f"invalid value for {param!r}: {msg}", param, "invalid_value"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param, code = _validation_message(exc)
        return error_response(400, message, param=param, code=code)

    @app.exception_handler(LyreError)
    async def _lyre_error(request: Request, exc: LyreError):
        return error_response(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # a bug: log it, answer 500
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); this is a bug in lyre")
