"""Continuous batching: one worker thread runs the model for every client.

Requests become `Job`s (a prompt, its sampling settings, `n` choices). The worker thread owns
the engine's running batch and loops:

    drop the rows of cancelled jobs (a client went away)      -> its slots are free at once
    admit waiting jobs while there are free slots              -> prefill, they join the batch
    decode one step for every row of the batch                 -> one forward pass
    hand each row's new text to its job's asyncio queue        -> the handler streams it

so new requests join between decode steps and a finished row leaves without waiting for the
others. The event loop never runs the model; it only awaits queues fed with
`loop.call_soon_threadsafe`.

Admission is bounded: at most `max_batch` rows decode together and at most `max_queue` jobs wait;
past that `submit` raises a 429 with Retry-After, and while the server drains (SIGTERM) a 503.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from lyre.serve.errors import APIError

log = logging.getLogger("lyre.serve")


@dataclass
class SchedulerSettings:
    max_batch: int = 32  # rows (choices) decoded together
    max_queue: int = 64  # jobs waiting for slots

    def validate(self) -> None:
        from lyre.errors import LyreError

        if self.max_batch < 1:
            raise LyreError(f"max_batch must be >= 1; got {self.max_batch}")
        if self.max_queue < 0:
            raise LyreError(f"max_queue must be >= 0; got {self.max_queue}")


# ----------------------------------------------------------------------------------------------
# What the handlers see


@dataclass
class Piece:
    """New text of choice `index`; `tokens` is how many tokens that choice has generated."""

    index: int
    text: str
    tokens: int
    logprobs: list[tuple[str, float]] | None = None


@dataclass
class Done:
    index: int
    finish_reason: str  # "stop" | "length"
    tokens: int


@dataclass
class Failed:
    status: int
    message: str
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(eq=False)
class Job:
    """One prompt and the `n` choices to generate from it."""

    prompt: list[int]
    n: int = 1
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    first_index: int = 0  # choice indices are first_index .. first_index + n - 1
    # set by Scheduler.submit
    events: asyncio.Queue | None = None
    loop: asyncio.AbstractEventLoop | None = None
    cancelled: bool = False
    finished: int = 0
    submitted_at: float = 0.0

    def emit(self, event) -> None:
        """Deliver an event to the handler (called from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True


# ----------------------------------------------------------------------------------------------


class Scheduler:
    def __init__(self, model, tokenizer, *, device="cpu", settings: SchedulerSettings | None = None,
                 batch=None) -> None:
        self.settings = settings or SchedulerSettings()
        self.settings.validate()
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self._batch = batch  # built in the worker thread unless given (tests)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque[Job] = deque()
        self._rows: dict[object, tuple[Job, int]] = {}  # row id -> (job, choice index)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.draining = False
        self.steps = 0
        self.generated_tokens = 0
        self.error: str | None = None

    # ---- called from the event loop ------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lyre-scheduler", daemon=True)
            self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job; raises APIError 429 (queue full) or 503 (draining / stopped)."""
        job.loop = asyncio.get_running_loop()
        if job.events is None:
            job.events = asyncio.Queue()
        job.submitted_at = time.monotonic()
        if job.n > self.settings.max_batch:
            raise APIError(400, f"n={job.n} is more than this server decodes at once "
                           f"({self.settings.max_batch})", param="n")
        with self._lock:
            if self.draining or self._stopping or self.error:
                raise APIError(503, "the server is shutting down" if not self.error else
                               f"the generation worker failed: {self.error}",
                               code="server_unavailable", headers={"Retry-After": "5"})
            if len(self._pending) >= self.settings.max_queue:
                raise APIError(429, f"the server is busy: {len(self._rows)} choices are being generated "
                               f"and {len(self._pending)} requests wait; retry later",
                               code="queue_full", headers={"Retry-After": "1"})
            self._pending.append(job)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """The client is gone or done: free the job's rows at the next step."""
        if job.cancelled:
            return
        job.cancelled = True
        with self._lock:
            self._wake.notify()

    def begin_drain(self) -> None:
        """Refuse new jobs from now on; running and queued ones continue."""
        with self._lock:
            self.draining = True
            self._wake.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Drain for up to `timeout` seconds, then cancel what is left and end the thread."""
        self.begin_drain()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self._pending or self._rows) and self._alive():
            time.sleep(0.05)
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, timeout))
        for job in list(self._pending) + [job for job, _ in self._rows.values()]:
            job.emit(Failed(503, "the server shut down before this request finished",
                            code="server_shutdown", headers={"Retry-After": "5"}))
        self._pending.clear()
        self._rows.clear()

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict:
        return dict(active=len(self._rows), queued=len(self._pending),
                    max_batch=self.settings.max_batch, max_queue=self.settings.max_queue,
                    steps=self.steps, generated_tokens=self.generated_tokens)

    # ---- the worker thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self._batch is None:
                self._batch = make_batch(self.model, self.tokenizer, self.device, self.settings.max_batch)
            while True:
                with self._lock:
                    while not self._stopping and not self._pending and not self._rows:
                        self._wake.wait()
                    if self._stopping:
                        return
                self._drop_cancelled()
                self._admit()
                if self._rows:
                    self._step()
        except Exception as e:  # a bug or an out-of-memory: fail every job, refuse new ones
            log.exception("the generation worker failed")
            self.error = f"{type(e).__name__}: {e}"
            with self._lock:
                jobs = list(self._pending) + list({id(j): j for j, _ in self._rows.values()}.values())
                self._pending.clear()
                self._rows.clear()
            for job in jobs:
                job.emit(Failed(500, f"generation failed ({self.error})", code="server_error"))

    def _drop_cancelled(self) -> None:
        for row, (job, _) in list(self._rows.items()):
            if job.cancelled:
                self._batch.remove(row)
                del self._rows[row]
        with self._lock:
            if any(job.cancelled for job in self._pending):
                self._pending = deque(job for job in self._pending if not job.cancelled)

    def _admit(self) -> None:
        """Move waiting jobs into the batch, first come first served, while slots are free."""
        while True:
            with self._lock:
                if not self._pending:
                    return
                job = self._pending[0]
                if len(self._rows) + job.n > self.settings.max_batch:
                    return  # the head job waits for slots (no overtaking: no starvation)
                self._pending.popleft()
            rows = self._batch.add(
                job.prompt, n=job.n, max_new_tokens=job.max_new_tokens, temperature=job.temperature,
                top_k=job.top_k, top_p=job.top_p, repetition_penalty=job.repetition_penalty,
                seed=job.seed, stop=job.stop, logprobs=job.logprobs,
            )
            for i, row in enumerate(rows):
                self._rows[row] = (job, job.first_index + i)

    def _step(self) -> None:
        updates = self._batch.step()
        self.steps += 1
        for u in updates:
            entry = self._rows.get(u.row)
            if entry is None:
                continue
            job, index = entry
            self.generated_tokens += u.new_tokens
            if u.text or u.logprobs:
                job.emit(Piece(index, u.text, u.tokens, u.logprobs))
            if u.finish_reason is not None:
                job.emit(Done(index, u.finish_reason, u.tokens))
                self._batch.remove(u.row)
                del self._rows[u.row]


def make_batch(model, tokenizer, device, capacity: int):
    """The engine's running batch (rows joining and leaving between decode steps)."""
    from lyre.serve._fallback import GeneratorBatch  # TODO: the engine's step-level API

    return GeneratorBatch(model, tokenizer, device, capacity)
