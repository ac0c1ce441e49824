"""Routes whose answer is a loop of model calls (`lyre serve --rag`, `--tools`) run that loop in a
worker thread, where it may block; two pieces connect it to the event loop:

    for event in job_events(scheduler, loop, job): ...   # one model call, from the worker thread
    SSEResponse(stream_from_thread(work, route))          # what the worker emits, as SSE events

The scheduler lives on the event loop, so a job is submitted there and its events come back
through a thread-safe queue. A streamed answer goes the other way: the worker calls `emit(event)`
for each delta, call or result, and once the client has left `emit` raises ClientLeft, which
ends the work at its next event instead of generating for nobody.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import AsyncIterator, Callable, Iterator

from pydantic import BaseModel

from lyre.serve.errors import APIError
from lyre.serve.scheduler import Done, Failed, Job, Piece, Scheduler
from lyre.serve.streaming import sse_data

log = logging.getLogger("lyre.serve")
EVENT_TIMEOUT_S = 600.0  # a model call that produces nothing for this long has failed

Emit = Callable[[dict], None]


class ClientLeft(Exception):
    """The streaming client went away: the work stops at its next event."""


def job_events(scheduler: Scheduler, loop: asyncio.AbstractEventLoop, job: Job) -> Iterator[Piece | Done]:
    """Submit `job` on the event loop and yield its Pieces, then its Done (from a worker thread).
    A failed job raises its APIError; the job is cancelled however the caller stops reading."""
    job.events = queue.Queue()  # Job.emit puts into it from the event loop: thread-safe
    asyncio.run_coroutine_threadsafe(_submit(scheduler, job), loop).result()
    try:
        while True:
            try:
                event = job.events.get(timeout=EVENT_TIMEOUT_S)
            except queue.Empty:
                raise APIError(500, "the model produced nothing for too long") from None
            if isinstance(event, Failed):
                raise APIError(event.status, event.message, code=event.code, headers=event.headers)
            if isinstance(event, Piece | Done):
                yield event
            if isinstance(event, Done):
                return
    finally:
        scheduler.cancel(job)  # frees the row at once when we stop early


async def _submit(scheduler: Scheduler, job: Job) -> None:
    scheduler.submit(job)  # on the event loop: the scheduler reads the running loop


async def stream_from_thread(work: Callable[[Emit], BaseModel], route: str) -> AsyncIterator[str]:
    """Run `work(emit)` in a thread: each event it emits is sent as it comes, then its result
    (or its error, in the OpenAI error shape), then `[DONE]`."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    gone = False

    def emit(event: dict) -> None:
        if gone:
            raise ClientLeft
        loop.call_soon_threadsafe(events.put_nowait, ("event", event))

    def finished(task: asyncio.Future) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here, so work stopped by ClientLeft is not logged
        events.put_nowait(("end", None))

    task = asyncio.ensure_future(asyncio.to_thread(work, emit))
    task.add_done_callback(finished)
    try:
        while True:
            kind, value = await events.get()
            if kind == "event":
                yield sse_data(value)
                continue
            try:
                yield sse_data(task.result())
            except APIError as e:
                yield sse_data(e.body())
            except Exception as e:  # a bug: said in the stream (the page shows it), and logged
                log.error("unhandled error in %s", route, exc_info=e)
                yield sse_data(APIError(500, f"internal error ({type(e).__name__}); this is a bug "
                                        "in lyre").body())
            yield "data: [DONE]\n\n"
            return
    finally:
        gone = True  # the client left (or we are done): the work stops at its next event
