"""The one client for OpenAI-compatible HTTP endpoints: `lyre judge`, `lyre rag --llm-url` and
the `openai:` embedder all talk through it, with one retry policy.

    client = OpenAIClient("http://localhost:8000/v1", api_key=None, timeout=60)
    reply = client.post_json("/chat/completions", body)      # retried, then parsed JSON
    with client.stream("POST", "/chat/completions", body) as response: ...   # server-sent events

The retry policy (RetryPolicy): a request that could not connect, got no reply within
`timeout` seconds, or was answered 429 or 5xx is sent again up to `retries` times, after
`backoff` seconds, then twice as long each time (0.5 s, 1 s, 2 s, ...). Anything else (401, 404,
a model the server does not know) is final at once: retrying cannot change it. What still fails
is an EndpointError: a LyreError whose one line says why ("cannot connect (Connection
refused)", "no reply within 60 s", "HTTP 500: boom"), with `.transient` telling the two kinds
apart (the judge counts a transient failure per response and stops on a final one).

Why not the `openai` package: it is an optional dependency (the dev extra) while httpx is a core
one; and lyre needs routes the SDK does not model (lyre serve's and vLLM's /tokenize, the
context length in GET /v1/models/{id}) and the same policy for all of them. This module is that
policy and nothing else; the callers own their request bodies and their replies' meaning.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from lyre.core.errors import LyreError

CONNECT_TIMEOUT_S = 10.0  # a server that does not accept a connection in 10 s is not there


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3  # extra tries after the first
    backoff: float = 0.5  # seconds before the first retry, doubled for each next one

    def delay(self, attempt: int) -> float:
        return self.backoff * 2 ** attempt


class EndpointError(LyreError):
    """A request that failed: `reason` is one short line; `transient` is True when it was a
    connection failure, a timeout, a 429 / 5xx or a reply that is not JSON (retried first)."""

    def __init__(self, url: str, reason: str, *, status: int | None = None,
                 transient: bool = False) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.status, self.transient = url, reason, status, transient


def is_retryable(status: int) -> bool:
    return status == 429 or status >= 500


def api_root(base_url: str) -> str:
    """http://host:8000, http://host:8000/ or http://host:8000/v1 -> http://host:8000/v1."""
    root = base_url.rstrip("/")
    return root if root.endswith("/v1") else root + "/v1"


class OpenAIClient:
    """An httpx client bound to one endpoint (`base_url` with or without /v1), an API key and
    the retry policy. Thread-safe: the judge sends `concurrency` requests through one client."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 60.0,
                 retry: RetryPolicy | None = None, what: str = "--base-url",
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise LyreError(f"{what} must be an http:// or https:// URL; got {base_url!r}")
        if not (math.isfinite(timeout) and timeout > 0):
            raise LyreError(f"the timeout must be a positive number of seconds; got {timeout}")
        self.api = api_root(base_url)
        self.root = self.api[: -len("/v1")]
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, transport=transport,
                                 timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S)))

    def url(self, path: str) -> str:
        """An absolute URL as is; a path under /v1 ("/chat/completions")."""
        return path if path.startswith(("http://", "https://")) else self.api + path

    # ---- the policy -----------------------------------------------------------------------

    def _retried(self, url: str, send: Callable[[], httpx.Response]) -> httpx.Response:
        """send() until it gets an answer that is not 429/5xx, or the retries are spent."""
        for attempt in range(self.retry.retries + 1):
            try:
                response = send()
            except httpx.HTTPError as e:
                error = EndpointError(url, self._transport_reason(e), transient=True)
            else:
                if not is_retryable(response.status_code):
                    return response
                error = EndpointError(url, f"HTTP {response.status_code}{error_detail(response)}",
                                      status=response.status_code, transient=True)
                response.close()
            if attempt < self.retry.retries:
                self._sleep(self.retry.delay(attempt))
        raise error

    def _transport_reason(self, e: httpx.HTTPError) -> str:
        if isinstance(e, httpx.TimeoutException) and not isinstance(e, httpx.ConnectTimeout):
            return f"no reply within {self.timeout:g} s"
        if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
            return f"cannot connect ({_short(e)})"
        return f"connection failed ({_short(e)})"

    # ---- requests -------------------------------------------------------------------------

    def request(self, method: str, path: str, *, retried: bool = True, **kw) -> httpx.Response:
        """The response (any status but 429/5xx) after the policy; EndpointError when none.
        `retried=False`: one try, any status returned (a probe of an optional route)."""
        url = self.url(path)
        if not retried:
            try:
                return self.http.request(method, url, **kw)
            except httpx.HTTPError as e:
                raise EndpointError(url, self._transport_reason(e), transient=True) from None
        return self._retried(url, lambda: self.http.request(method, url, **kw))

    def post_json(self, path: str, body: dict, extract: Callable[[Any], Any] | None = None,
                  expected: str = "an OpenAI response") -> Any:
        """POST a JSON body; the reply's JSON (or `extract(json)`). A 4xx is a final
        EndpointError; a reply that is not JSON (or that `extract` rejects with KeyError,
        IndexError, TypeError or ValueError) a transient one, retried as the policy says."""
        url = self.url(path)
        for attempt in range(self.retry.retries + 1):
            response = self.request("POST", url, json=body)
            raise_for_status(response)
            try:
                obj = response.json()
                return extract(obj) if extract is not None else obj
            except (ValueError, KeyError, IndexError, TypeError):
                error = EndpointError(url, f"the reply is not {expected}: "
                                           f"{response.content[:80]!r}", transient=True)
            if attempt < self.retry.retries:
                self._sleep(self.retry.delay(attempt))
        raise error

    @contextmanager
    def stream(self, method: str, path: str, **kw) -> Iterator[httpx.Response]:
        """A streamed response. Only its start is retried (no connection, 429, 5xx): once
        pieces have arrived they are the caller's, so a failure mid-stream is not replayed."""
        url = self.url(path)

        def send() -> httpx.Response:
            return self.http.send(self.http.build_request(method, url, **kw), stream=True)

        response = self._retried(url, send)
        try:
            yield response
        except httpx.TimeoutException:
            raise EndpointError(url, f"no reply within {self.timeout:g} s", transient=True) from None
        except httpx.HTTPError as e:
            raise EndpointError(url, f"connection failed ({_short(e)})", transient=True) from None
        finally:
            response.close()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def raise_for_status(response: httpx.Response) -> None:
    """A final EndpointError for a 4xx/5xx response, with the server's own message."""
    if response.status_code >= 400:
        if not response.is_closed:
            response.read()
        raise EndpointError(str(response.request.url),
                            f"HTTP {response.status_code}{error_detail(response)}",
                            status=response.status_code,
                            transient=is_retryable(response.status_code))


def error_detail(response: httpx.Response) -> str:
    """': message' from OpenAI's error shape {"error": {"message": ...}} (or a plain text
    body), else ''."""
    try:
        if not response.is_closed:
            response.read()
        body = response.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        message = err.get("message") if isinstance(err, dict) else err
        text = str(message or "").strip()
    except (ValueError, httpx.HTTPError):
        text = response.text.strip() if response.is_closed else ""
        if text.startswith("<"):  # an HTML page: its status says enough
            text = ""
    return f": {text.splitlines()[0][:160]}" if text else ""


def _short(e: Exception) -> str:
    """'Connection refused' out of '[Errno 111] Connection refused' (or the class name)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text)[:120]


__all__ = ["OpenAIClient", "RetryPolicy", "EndpointError", "raise_for_status", "error_detail",
           "api_root", "is_retryable"]
