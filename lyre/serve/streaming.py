"""One request's generation, seen from the event loop: submit its jobs, then either collect the
whole answer or stream it as server-sent events.

    gen = Generation(scheduler, jobs, on_first_token=...)
    await gen.submit()                                   # 429 / 503 raised here
    return SSEResponse(gen.sse(chunks, prompt_tokens, include_usage))     # stream: true
    answer = await gen.collect(request, n_choices)       # otherwise (ClientGone if they leave)

Both ways read the same event loop (Generation.events): the scheduler's Piece / Done / Failed
events of every choice, keep-alive ticks while nothing happens, and the jobs cancelled however
it ends. The routes only say how events become chunks (a ChunkMaker).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from lyre.serve import schemas as S
from lyre.serve.errors import APIError
from lyre.serve.logprobs import TokenLogprob
from lyre.serve.scheduler import Done, Failed, Job, Piece, Scheduler

KEEPALIVE_S = 5.0  # an SSE comment this often while a request waits in the queue
CLIENT_CLOSED = 499  # nginx's "client closed request": logged, never seen by anyone


class ClientGone(Exception):
    """The client of a non-streamed request disconnected before its answer was ready."""


class ChunkMaker(Protocol):
    """How a route turns the events of one request into its stream's chunks (None: skip)."""

    def opening(self) -> list[BaseModel]: ...
    def piece(self, event: Piece) -> BaseModel | None: ...
    def done(self, event: Done) -> BaseModel: ...
    def usage(self, usage: S.Usage) -> BaseModel: ...


@dataclass
class Answer:
    """Every choice of a non-streamed request."""

    texts: list[str]
    tokens: list[int]
    finish: list[str | None]
    logprobs: list[list[TokenLogprob]]


def usage(prompt_tokens: int, completion_tokens: int) -> S.Usage:
    return S.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


def sse_data(obj: BaseModel | dict | str) -> str:
    if isinstance(obj, BaseModel):
        obj = obj.model_dump_json(exclude_none=False)
    elif isinstance(obj, dict):
        obj = json.dumps(obj)
    return f"data: {obj}\n\n"


@dataclass
class Generation:
    """The jobs of one request (one per prompt, `n` choices each) on the scheduler."""

    scheduler: Scheduler
    jobs: list[Job]
    on_first_token: Callable[[], None] | None = None  # called once, at the first new token
    _first_seen: bool = field(default=False, init=False)

    async def submit(self) -> None:
        """Queue every job; raises the scheduler's 429 / 503 (nothing stays queued then)."""
        queue: asyncio.Queue = asyncio.Queue()  # one queue for all choices of a request
        try:
            for job in self.jobs:
                job.events = queue
                self.scheduler.submit(job)
        except APIError:
            self.cancel()
            raise

    def cancel(self) -> None:
        for job in self.jobs:
            self.scheduler.cancel(job)

    async def events(self, watcher: asyncio.Task | None = None) -> AsyncIterator[object]:
        """Events of the request's jobs until every choice is done or one failed; None after
        KEEPALIVE_S without any. Ends with ClientGone as soon as `watcher` (a disconnect
        watcher) finishes. However it ends, the jobs are cancelled, which frees their rows at
        the scheduler's next step."""
        queue = self.jobs[0].events
        remaining = sum(job.n for job in self.jobs)
        try:
            while remaining:
                getter = asyncio.ensure_future(queue.get())
                waiting = {getter} if watcher is None else {getter, watcher}
                done, _ = await asyncio.wait(waiting, timeout=KEEPALIVE_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    if watcher is not None and watcher.done():
                        raise ClientGone
                    yield None
                    continue
                event = getter.result()
                if isinstance(event, Done):
                    remaining -= 1
                elif isinstance(event, Piece) and event.tokens and not self._first_seen:
                    self._first_seen = True
                    if self.on_first_token is not None:
                        self.on_first_token()
                yield event
                if isinstance(event, Failed):
                    return
        finally:
            self.cancel()

    async def collect(self, request: Request, n_choices: int) -> Answer:
        """Every choice's text, token count, finish reason and log-probs. Raises ClientGone
        when the client disconnects first, APIError when generation failed."""
        answer = Answer([""] * n_choices, [0] * n_choices, [None] * n_choices,
                        [[] for _ in range(n_choices)])
        watcher = asyncio.create_task(_wait_disconnect(request))
        try:
            async for event in self.events(watcher):
                if isinstance(event, Piece):
                    answer.texts[event.index] += event.text
                    answer.tokens[event.index] = event.tokens
                    answer.logprobs[event.index] += event.logprobs or []
                elif isinstance(event, Done):
                    answer.finish[event.index] = event.finish_reason
                    answer.tokens[event.index] = event.tokens
                elif isinstance(event, Failed):
                    raise APIError(event.status, event.message, code=event.code,
                                   headers=event.headers)
        finally:
            watcher.cancel()
        return answer

    async def sse(self, chunks: ChunkMaker, prompt_tokens: int,
                  include_usage: bool) -> AsyncIterator[str]:
        """The server-sent events of the request: the opening chunks, one chunk per piece of
        text and per finished choice, keep-alive comments, an error event if generation failed,
        the usage chunk when asked for, and `data: [DONE]`."""
        for chunk in chunks.opening():
            yield sse_data(chunk)
        tokens: dict[int, int] = {}
        async for event in self.events():
            if event is None:
                yield ": keep-alive\n\n"
                continue
            if isinstance(event, Failed):
                yield sse_data(APIError(event.status, event.message, code=event.code).body())
                break
            tokens[event.index] = event.tokens
            chunk = chunks.piece(event) if isinstance(event, Piece) else chunks.done(event)
            if chunk is not None:
                yield sse_data(chunk)
        if include_usage:
            yield sse_data(chunks.usage(usage(prompt_tokens, sum(tokens.values()))))
        yield "data: [DONE]\n\n"


async def _wait_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


class SSEResponse(StreamingResponse):
    """Server-sent events that stop (and run the generator's cleanup) when the client leaves.

    Starlette only watches for a disconnect under ASGI spec < 2.4; this does it always, so a
    client that goes away mid-stream frees its slot at once whatever the server.
    """

    media_type = "text/event-stream"

    def __init__(self, content) -> None:
        # No caching, and no buffering by a reverse proxy (nginx honours X-Accel-Buffering).
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as tg:
            async def stream() -> None:
                try:
                    await self.stream_response(send)
                except OSError:  # the socket went away while we wrote
                    pass
                tg.cancel_scope.cancel()

            async def watch() -> None:
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            tg.start_soon(watch)
