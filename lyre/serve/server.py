"""Running the app with uvicorn: `lyre serve` (run_server, for a language model or a classifier
alike), and a background server for tests and benchmarks.

Shutdown on SIGTERM or Ctrl-C: uvicorn stops accepting connections, the app's state starts
draining (new requests on open connections get 503 + Retry-After), in-flight requests get
`shutdown_timeout` seconds to finish, what is left is cancelled (streams end), then the worker
thread stops and the process exits 0.

Slow clients: a connection must deliver a request's headers within `read_timeout` seconds of
opening (or of the request's first byte on a kept-alive connection), else it gets 408 and is
closed; the body then gets as long again (BodyLimitMiddleware). uvicorn itself waits forever.

Logs: uvicorn's own lines, lyre's errors (logger lyre.serve) and one access line per request
(lyre.serve.access, written by AccessMiddleware in place of uvicorn's) at the default level info.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import logging
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from lyre.classify.predict import Classifier
from lyre.core.errors import LyreError
from lyre.generate.runs import LoadedRun
from lyre.serve.app import ServeSettings, create_app
from lyre.serve.state import ClassifierState, Served

log = logging.getLogger("lyre.serve")


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app's state to drain as soon as shutdown begins."""

    def __init__(self, config: uvicorn.Config, state: Served, install_signals: bool = True) -> None:
        super().__init__(config)
        self.state = state
        self.install_signals = install_signals

    def handle_exit(self, sig, frame) -> None:
        self.state.begin_drain()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn re-raises the captured signal after shutting down, so the process would die of
        # it; a server that shut down cleanly exits 0 instead. No handlers outside the main thread.
        if not self.install_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in original.items():
                signal.signal(s, handler)


class _HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol plus a deadline for a request's headers (slowloris).

    The deadline runs while the connection is waiting for a complete request head: from the
    connection's start, and from the first byte of each later request. A connection idle between
    requests is uvicorn's (timeout_keep_alive). Subclasses set `timeout`.
    """

    timeout: float = 30.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _watch(self) -> None:
        if self._waiting_for_head() and self.conn.trailing_data[0]:  # a request has begun
            if self._deadline is None:
                self._deadline = self.loop.call_later(self.timeout, self._too_slow)
        else:
            self._cancel()

    def _cancel(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or not self._waiting_for_head():
            return
        if self.conn.trailing_data[0]:  # part of a request came: say why it ends
            body = json.dumps({"error": {
                "message": f"the request's headers did not arrive within {self.timeout:g} s",
                "type": "invalid_request_error", "param": None, "code": "request_timeout"}})
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body.encode()))
        self.transport.close()


def _protocol(read_timeout: float) -> type[H11Protocol]:
    return type("HeaderDeadlineH11", (_HeaderDeadline,), {"timeout": read_timeout})


def _log_config(level: str) -> dict:
    """uvicorn's logging set-up, plus lyre's loggers: errors to stderr, access lines to stdout
    (where uvicorn writes its own access lines), both in uvicorn's format."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["lyre_access"] = {"()": "uvicorn.logging.DefaultFormatter",
                                           "fmt": "%(levelprefix)s %(message)s"}
    config["handlers"]["lyre_access"] = {"formatter": "lyre_access", "class": "logging.StreamHandler",
                                         "stream": "ext://sys.stdout"}
    config["loggers"]["lyre.serve"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["loggers"]["lyre.serve.access"] = {"handlers": ["lyre_access"], "level": level.upper(),
                                              "propagate": False}
    return config


def _config(app, host: str, port: int, settings: ServeSettings, log_level: str,
            log_config: dict | None = None) -> uvicorn.Config:
    kwargs = {} if log_config is None else {"log_config": log_config}
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level,
        access_log=False,  # AccessMiddleware writes one line per request, with its duration
        timeout_graceful_shutdown=settings.shutdown_timeout, lifespan="on",
        http=_protocol(settings.read_timeout), **kwargs,
    )


def run_server(run: LoadedRun | Classifier, host: str = "127.0.0.1", port: int = 8000,
               settings: ServeSettings | None = None, log_level: str = "info") -> None:
    """Serve `run` (a language model or a classifier; lyre.serve.app.load_served) until
    SIGTERM/SIGINT. Blocks."""
    settings = settings or ServeSettings()
    _check_port(host, port)
    app = create_app(run, settings)
    shown = f"[{host}]" if ":" in host else host
    print(f"lyre serve: {_banner(app)}, API key {'required' if settings.api_key else 'off'}; "
          f"page http://{shown}:{port}/ , API http://{shown}:{port}/v1", file=sys.stderr, flush=True)
    if not settings.api_key and not _is_loopback(host):
        print(f"lyre serve: warning: listening on {host} without an API key: anyone who can reach "
              "this machine can use the model; set --api-key or LYRE_API_KEY", file=sys.stderr, flush=True)
    config = _config(app, host, port, settings, log_level, log_config=_log_config(log_level))
    _Server(config, app.state.serve).run()


def _banner(app) -> str:
    """What is served, for the start-up line (a language model's KV cache is allocated now)."""
    state = app.state.serve
    if isinstance(state, ClassifierState):
        return (f"classifier {state.model_name!r} ({', '.join(state.classifier.labels)}) at "
                "POST /v1/classify")
    cache_bytes = state.scheduler.reserve()
    return (f"model {state.model_name!r} ({state.block_size}-token context, template "
            f"{state.template.name}), KV cache {cache_bytes / 2**30:.2f} GiB for "
            f"{state.settings.max_batch} rows")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _check_port(host: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise LyreError(f"--port must be in 0..65535; got {port}")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise LyreError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class BackgroundServer:
    """A live server in a thread of this process (tests, benchmarks)."""

    app: object
    server: _Server
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 15.0) -> None:
        self.server.handle_exit(None, None)
        self.thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_background(run: LoadedRun | Classifier, settings: ServeSettings | None = None, host: str = "127.0.0.1",
                     port: int | None = None, log_level: str = "warning",
                     timeout: float = 30.0) -> BackgroundServer:
    """Start uvicorn in a daemon thread and wait until it accepts connections."""
    settings = settings or ServeSettings()
    port = port or free_port(host)
    app = create_app(run, settings)
    server = _Server(_config(app, host, port, settings, log_level), app.state.serve,
                     install_signals=False)
    thread = threading.Thread(target=server.run, name="lyre-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server thread died while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start within {timeout} s")
        time.sleep(0.02)
    return BackgroundServer(app, server, thread, host, port)
