"""Running the app with uvicorn: `lyre serve`, and a background server for tests and benchmarks.

Shutdown on SIGTERM or Ctrl-C: uvicorn stops accepting connections, the scheduler starts
draining (new requests on open connections get 503 + Retry-After), in-flight requests get
`shutdown_timeout` seconds to finish, what is left is cancelled (streams end), then the worker
thread stops and the process exits 0.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

import uvicorn

from lyre.errors import LyreError
from lyre.serve.app import ServeSettings, create_app

log = logging.getLogger("lyre.serve")


class _Server(uvicorn.Server):
    """uvicorn's server, telling the scheduler to drain as soon as shutdown begins."""

    def __init__(self, config: uvicorn.Config, scheduler, install_signals: bool = True) -> None:
        super().__init__(config)
        self.scheduler = scheduler
        self.install_signals = install_signals

    def handle_exit(self, sig, frame) -> None:
        self.scheduler.begin_drain()
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


def _config(app, host: str, port: int, settings: ServeSettings, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
        timeout_graceful_shutdown=settings.shutdown_timeout, lifespan="on",
        # Our own handlers set the limits; uvicorn's defaults are fine otherwise.
    )


def serve(run, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None,
          log_level: str = "info") -> None:
    """Serve `run` until SIGTERM/SIGINT. Blocks."""
    settings = settings or ServeSettings()
    _check_port(host, port)
    app = create_app(run, settings)
    cache_bytes = app.state.scheduler.reserve()
    shown = f"[{host}]" if ":" in host else host
    print(f"lyre serve: model {app.state.model_name!r} ({run.config.model.block_size}-token context, "
          f"template {app.state.template}), API key {'required' if settings.api_key else 'off'}, "
          f"KV cache {cache_bytes / 2**30:.2f} GiB for {settings.max_batch} rows; "
          f"chat page http://{shown}:{port}/ , API http://{shown}:{port}/v1", file=sys.stderr, flush=True)
    if not settings.api_key and not _is_loopback(host):
        print(f"lyre serve: warning: listening on {host} without an API key: anyone who can reach "
              "this machine can use the model; set --api-key or LYRE_API_KEY", file=sys.stderr, flush=True)
    server = _Server(_config(app, host, port, settings, log_level), app.state.scheduler)
    server.run()


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


def start_background(run, settings: ServeSettings | None = None, host: str = "127.0.0.1",
                     port: int | None = None, log_level: str = "warning",
                     timeout: float = 30.0) -> BackgroundServer:
    """Start uvicorn in a daemon thread and wait until it accepts connections."""
    settings = settings or ServeSettings()
    port = port or free_port(host)
    app = create_app(run, settings)
    server = _Server(_config(app, host, port, settings, log_level), app.state.scheduler,
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
