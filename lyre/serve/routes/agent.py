"""POST /v1/agent/answer: the chat page's agent (`lyre serve RUN --tools calculator,...`).

    curl localhost:8000/v1/agent/answer -d '{"messages": [{"role": "user", "content": "6 times 7?"}]}'

The server runs the tools: the served run answers through lyre.agent's loop (Agent), each of
its model calls a job on the server's scheduler (so it batches with ordinary chat traffic), each
tool call run here under its time limit. This is for the chat page: the OpenAI API itself stays
OpenAI-shaped (/v1/chat/completions returns tool calls and clients run their own tools).

Body: messages (the conversation so far: user and assistant turns, the last one the user's),
max_tokens (per model call), temperature, seed, max_steps, tool_choice, stream. Answer: {"object":
"agent.answer", "answer", "stopped", "steps": [{name, arguments, result, error, call_id, turn}],
"model_calls", "tool_errors", "notices"}. With `stream: true`, server-sent events as it goes:
{"object": "agent.call", "call_id", "name", "arguments"} when a call starts, {"object":
"agent.result", "call_id", "result", "is_error"} when it ends, {"object": "agent.delta", "text"}
for each piece of the answer, then the agent.answer object and `data: [DONE]`; an error
mid-way is an {"error": {...}} event.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from lyre.agent import Agent, parse_tools
from lyre.agent.llm import Reply, RunChat
from lyre.core.errors import LyreError
from lyre.serve import schemas as S
from lyre.serve.errors import APIError
from lyre.serve.scheduler import Job, Piece, Scheduler
from lyre.serve.streaming import SSEResponse
from lyre.serve.worker import Emit, job_events, stream_from_thread

router = APIRouter(tags=["lyre"])
MAX_STEPS = 32


class AgentMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str = Field(max_length=100_000)


class AgentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[AgentMessage] = Field(min_length=1, max_length=200,
                                         description="The conversation; the last is the user's.")
    max_tokens: int | None = Field(None, ge=1, description="Tokens per model call.")
    temperature: float | None = Field(None, ge=0, le=2, description="Default 0: greedy.")
    seed: int | None = Field(None, description="Random seed (with temperature > 0).")
    max_steps: int | None = Field(None, ge=1, le=MAX_STEPS,
                                  description="Model calls that may call tools (default 8).")
    tool_choice: str = Field("auto", max_length=64,
                             description="auto (the model decides), required, none, or a tool's name.")
    stream: bool = Field(False, description="Server-sent events: calls, results, deltas, answer.")


class AgentStep(BaseModel):
    name: str
    arguments: Any
    result: str
    error: bool
    call_id: str
    turn: int


class AgentAnswer(BaseModel):
    object: Literal["agent.answer"] = "agent.answer"
    model: str
    answer: str
    stopped: str
    steps: list[AgentStep]
    model_calls: int
    tool_errors: int
    notices: list[str]


class ServedChat(RunChat):
    """The served run as a lyre.agent chat model whose calls are jobs on the scheduler."""

    def __init__(self, service: AgentService, loop: asyncio.AbstractEventLoop, **kw) -> None:
        super().__init__(service.tokenizer, service.template, service.block_size,
                         service.model_name, **kw)
        self.scheduler, self.loop = service.scheduler, loop

    def chat(self, messages, tools, tool_choice="auto", on_token=None) -> Reply:
        # A LyreError here (ContextFull: the conversation outgrew the context) is the loop's
        # to handle: a notice after the first call, a 400 (AgentService.answer) on it.
        ids, params = self.request(messages, tools, tool_choice)
        job = Job(prompt=ids, params=params)
        reader = self.reader(tools if tool_choice != "none" else [])
        for event in job_events(self.scheduler, self.loop, job):
            if isinstance(event, Piece):
                piece = reader.feed(event.text)
            else:  # Done: the last one
                piece, reply = reader.finish(event.finish_reason)
            if piece and on_token is not None:
                on_token(piece)
        return reply


class AgentService:
    """The tools (opened once, at start) and what a model call needs of the served run."""

    def __init__(self, run, scheduler: Scheduler, template, model_name: str, tools: str) -> None:
        self.tools = parse_tools(tools)  # an unknown tool or a missing index fails now
        self.scheduler, self.template, self.model_name = scheduler, template, model_name
        # The engine's context, as lyre.agent.EngineChat: a recurrent run has none.
        self.tokenizer, self.block_size = run.tokenizer, scheduler.engine.block_size

    @staticmethod
    def of(request: Request) -> AgentService:
        return request.app.state.agent

    def answer(self, req: AgentRequest, loop: asyncio.AbstractEventLoop, handlers=(),
               on_token=None) -> AgentAnswer:
        """Run in a worker thread: the loop, its model calls on the scheduler."""
        if req.messages[-1].role != "user":
            raise APIError(400, "the last message must be the user's", param="messages")
        kw = {} if req.max_tokens is None else {"max_tokens": req.max_tokens}
        llm = ServedChat(self, loop, temperature=req.temperature or 0.0, seed=req.seed, **kw)
        try:
            agent = Agent(llm, self.tools, max_steps=req.max_steps or 8, callbacks=list(handlers),
                          tool_choice=req.tool_choice)
        except LyreError as e:
            raise APIError(400, str(e), param="tool_choice") from None
        history = [m.model_dump() for m in req.messages[:-1]]
        try:
            result = agent.run(req.messages[-1].content, history=history, on_token=on_token)
        except LyreError as e:
            raise APIError(400, str(e), param="messages") from None
        return AgentAnswer(model=self.model_name, answer=result.answer, stopped=result.stopped,
                           steps=[AgentStep(name=s.name, arguments=s.arguments, result=s.result,
                                            error=s.error, call_id=s.call_id, turn=s.turn)
                                  for s in result.steps],
                           model_calls=result.model_calls, tool_errors=result.tool_errors,
                           notices=result.notices)


def install(app, run, scheduler: Scheduler, template, model_name: str, tools: str) -> APIRouter:
    """Open the tools (a LyreError now, before the server starts, for a bad --tools) and
    return the router to include."""
    app.state.agent = AgentService(run, scheduler, template, model_name, tools)
    app.state.serve.tool_names = [t.name for t in app.state.agent.tools]
    return router


@router.post("/v1/agent/answer", response_model=AgentAnswer,
             responses={**S.sse_responses(AgentAnswer), **S.error_responses(400, 401, 413, 429, 503)})
async def agent_answer(req: AgentRequest, request: Request):
    service = AgentService.of(request)
    loop = asyncio.get_running_loop()
    if not req.stream:
        return await asyncio.to_thread(service.answer, req, loop)
    return SSEResponse(stream_from_thread(lambda emit: _streamed(service, req, loop, emit),
                                          "POST /v1/agent/answer"))


class _Events:
    """Each call and result as a stream event (a callbacks handler: ClientLeft, raised by emit
    once the client has gone, must stop the loop, hence raise_error)."""

    raise_error = True

    def __init__(self, emit: Emit) -> None:
        self.emit = emit

    def on_tool_start(self, name, arguments, **kw) -> None:
        self.emit({"object": "agent.call", "call_id": kw.get("call_id"), "name": name,
                   "arguments": arguments})

    def on_tool_end(self, output, **kw) -> None:
        # "is_error", not "error": an event with an "error" key is a failure of the stream
        self.emit({"object": "agent.result", "call_id": kw.get("call_id"), "result": output,
                   "is_error": bool(kw.get("error"))})


def _streamed(service: AgentService, req: AgentRequest, loop: asyncio.AbstractEventLoop, emit: Emit):
    return service.answer(req, loop, [_Events(emit)],
                          lambda piece: emit({"object": "agent.delta", "text": piece}))
