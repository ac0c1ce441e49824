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

from lyre.core.errors import LyreError
from lyre.engine import Batch, Engine, Row, SamplingConfig
from lyre.serve.errors import APIError
from lyre.serve.logprobs import TokenLogprob, new_logprobs

log = logging.getLogger("lyre.serve")


@dataclass
class SchedulerSettings:
    max_batch: int = 32  # rows (choices) decoded together
    max_queue: int = 64  # jobs waiting for slots

    def validate(self) -> None:
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
    logprobs: list[TokenLogprob] | None = None  # one per new token (with logprobs=True)


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
    """One prompt and the `params.num_samples` choices to generate from it."""

    prompt: list[int]
    params: SamplingConfig
    first_index: int = 0  # choice indices are first_index .. first_index + n - 1
    # set by Scheduler.submit
    events: asyncio.Queue | None = None
    loop: asyncio.AbstractEventLoop | None = None
    cancelled: bool = False
    finished: int = 0
    submitted_at: float = 0.0

    @property
    def n(self) -> int:
        return self.params.num_samples

    def emit(self, event) -> None:
        """Deliver an event to the handler (called from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True


# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Live:
    job: Job
    index: int  # the choice index in the response
    reported: int = 0  # tokens already handed to the job


class Scheduler:
    def __init__(self, engine: Engine, *, settings: SchedulerSettings | None = None,
                 batch: Batch | None = None) -> None:
        self.settings = settings or SchedulerSettings()
        self.settings.validate()
        self.engine = engine
        # One batch for the life of the server: its KV cache is allocated once.
        self._new_batch = (lambda: batch) if batch is not None else \
            (lambda: engine.new_batch(self.settings.max_batch))
        self._batch = self._new_batch()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque[Job] = deque()
        self._live: dict[Row, _Live] = {}  # rows of running jobs, finished ones until reported
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.draining = False
        self.steps = 0
        self.generated_tokens = 0
        self.failures = 0  # steps that raised (each failed its batch's requests)

    # ---- called from the event loop ------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lyre-scheduler", daemon=True)
            self._thread.start()

    def reserve(self) -> int:
        """Allocate the batch's KV cache now (see engine.Batch.reserve); returns its bytes."""
        try:
            return self._batch.reserve()
        except (MemoryError, RuntimeError) as e:  # torch reports a failed allocation as either
            raise LyreError(f"not enough memory for the KV cache of {self.settings.max_batch} rows "
                            f"({type(e).__name__}); lower --max-batch") from e

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
            if self.draining or self._stopping:
                raise APIError(503, "the server is shutting down", code="server_unavailable",
                               headers={"Retry-After": "5"})
            if len(self._pending) >= self.settings.max_queue:
                raise APIError(429, f"the server is busy: {len(self._live)} choices are being generated "
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
        while time.monotonic() < deadline and (self._pending or self._live) and self._alive():
            time.sleep(0.05)
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, timeout))
        with self._lock:
            jobs = list(self._pending) + [live.job for live in self._live.values()]
            self._pending.clear()
            self._live.clear()
        for job in dict.fromkeys(jobs):
            job.emit(Failed(503, "the server shut down before this request finished",
                            code="server_shutdown", headers={"Retry-After": "5"}))

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict:
        return dict(active=len(self._live), queued=len(self._pending),
                    max_batch=self.settings.max_batch, max_queue=self.settings.max_queue,
                    steps=self.steps, generated_tokens=self.generated_tokens)

    # ---- the worker thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._pending and not self._live:
                    self._wake.wait()
                if self._stopping:
                    return
            try:
                self._drop_cancelled()
                self._admit()
                if len(self._batch):
                    self._batch.step()
                    self.steps += 1
                self._report()
            except Exception as e:  # a bug (or out of memory) in one step must not kill the server
                self._recover(e)

    def _recover(self, error: Exception) -> None:
        """Fail the jobs of the running batch with a 500, start a fresh batch, carry on with
        the queue. The batch's state after a failed step cannot be trusted."""
        log.exception("a generation step failed; failing its %d row(s) and starting a new batch",
                      len(self._live))
        self.failures += 1
        jobs = dict.fromkeys(live.job for live in self._live.values())
        for row in self._live:
            try:
                self._batch.remove(row)
            except Exception:  # the fresh batch below replaces it anyway
                pass
        self._live.clear()
        for job in jobs:
            job.cancelled = True
            job.emit(Failed(500, f"generation failed ({type(error).__name__}: {error}); "
                                 "this is a bug in lyre", code="generation_failed"))
        self._batch = self._new_batch()

    def _drop_cancelled(self) -> None:
        for row, live in list(self._live.items()):
            if live.job.cancelled:
                self._batch.remove(row)
                del self._live[row]
        with self._lock:
            if any(job.cancelled for job in self._pending):
                self._pending = deque(job for job in self._pending if not job.cancelled)

    def _admit(self) -> None:
        """Move waiting jobs into the batch, first come first served, while rows are free.

        They are added together: prompts of similar lengths then share one prefill forward,
        which matters when many clients arrive at once (bench/serve_load.py)."""
        jobs, free = [], self._batch.free
        with self._lock:
            # The head job waits for rows when it does not fit: no overtaking, no starvation.
            while self._pending and self._pending[0].n <= free:
                job = self._pending.popleft()
                if not job.cancelled:  # its client left while it waited
                    jobs.append(job)
                    free -= job.n
        if not jobs:
            return
        try:
            rows = self._batch.add([job.prompt for job in jobs], [job.params for job in jobs])
        except LyreError:  # the handlers validated; this is a last line of defence
            for job in jobs:  # one at a time, so only a bad job fails (400) and the rest run
                self._add_alone(job)
            return
        for job in jobs:  # add() returns the rows job by job, n each
            self._track(job, rows[: job.n])
            rows = rows[job.n :]
        self._report()  # first tokens go out now, not after the next decode step

    def _add_alone(self, job: Job) -> None:
        try:
            rows = self._batch.add([job.prompt], job.params)
        except LyreError as e:
            job.emit(Failed(400, str(e), code="invalid_request"))
            return
        self._track(job, rows)

    def _track(self, job: Job, rows: list[Row]) -> None:
        for i, row in enumerate(rows):
            self._live[row] = _Live(job, job.first_index + i)

    def _report(self) -> None:
        """Hand every row's new text (and finish) to its job; forget finished rows."""
        token_bytes = self.engine.tokenizer.token_bytes
        for row, live in list(self._live.items()):
            text = row.take_text()
            new = len(row.tokens) - live.reported
            if text or new:
                logprobs = None
                if row.logprobs is not None and new:
                    logprobs = new_logprobs(row, live.reported, token_bytes)
                self.generated_tokens += new
                live.reported = len(row.tokens)
                live.job.emit(Piece(live.index, text, len(row.tokens), logprobs))
            if row.finished:
                del self._live[row]  # first: the client may ask /health as soon as it has its answer
                live.job.emit(Done(live.index, row.finish_reason, len(row.tokens)))
