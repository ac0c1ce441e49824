"""POST /v1/chat/completions: messages rendered with the run's prompt template, an answer back."""

from __future__ import annotations

import asyncio
import secrets
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lyre.chat.templates import AnswerTrimmer, check_messages
from lyre.chat.tools import CallDelta, ToolCallStream, parse_tool_calls
from lyre.core.errors import LyreError
from lyre.serve import schemas as S
from lyre.serve.errors import APIError
from lyre.serve.logprobs import chat_logprobs
from lyre.serve.scheduler import Done, Job, Piece
from lyre.serve.state import ServeState
from lyre.serve.streaming import CLIENT_CLOSED, ClientGone, Generation, SSEResponse, usage
from lyre.serve.structured import (
    Plan,
    chat_plan,
    compile_plan,
    request_messages,
    tool_call_out,
)

router = APIRouter(tags=["openai"])


@router.post("/v1/chat/completions", response_model=S.ChatCompletion,
             responses={**S.sse_responses(S.ChatCompletion), **S.error_responses(*S.GENERATION_ERRORS)})
async def chat_completions(req: S.ChatCompletionRequest, request: Request):
    serve = ServeState.of(request)
    serve.check_model(req.model)
    serve.check_common(req)
    if req.max_tokens is not None and req.max_completion_tokens is not None \
            and req.max_tokens != req.max_completion_tokens:
        raise APIError(400, "max_tokens and max_completion_tokens differ; give one",
                       param="max_completion_tokens")
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs",
                       code="invalid_value")
    n = req.n or 1
    plan = chat_plan(req)
    ids = await asyncio.to_thread(_prompt_ids, serve, req, plan)
    serve.check_prompt(ids, "messages")
    await compile_plan(plan, serve.tokenizer)
    requested = req.max_completion_tokens or req.max_tokens
    # A constrained answer ends where its grammar does; the template's stop strings could cut
    # it short (a JSON string may hold "<|im_end|>"), so they apply only to free text.
    stops = (list(serve.template.stop) if plan.free_text else []) + serve.stops(req)
    params = serve.sampling(req, serve.max_new_tokens(requested, len(ids)), stops,
                            bool(req.logprobs), req.top_logprobs or 0, plan.constraint)
    gen = Generation(serve.scheduler, [Job(prompt=ids, params=params)],
                     serve.first_token_timer(request, "/v1/chat/completions"))
    await gen.submit()
    serve.metrics.prompt_tokens.inc(len(ids))
    chunks = ChatChunks(serve, f"chatcmpl-{secrets.token_hex(12)}", n, plan)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return SSEResponse(gen.sse(chunks, len(ids), include_usage))
    try:
        answer = await gen.collect(request, n)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    choices = []
    for i, text in enumerate(answer.texts):
        logprobs = chat_logprobs(answer.logprobs[i]) if req.logprobs else None
        message, finish = _message(serve, plan, text, answer.finish[i])
        choices.append(S.ChatChoice(index=i, message=message, finish_reason=finish,
                                    logprobs=logprobs))
    return S.ChatCompletion(id=chunks.cid, created=chunks.created, model=serve.model_name,
                            choices=choices, usage=usage(len(ids), sum(answer.tokens)))


def _message(serve: ServeState, plan: Plan, text: str,
             finish: str | None) -> tuple[S.AssistantMessage, str | None]:
    """The assistant message of one choice, its tool calls read out of the text when the
    request could call tools; finish reason "tool_calls" when it did (and was not cut short)."""
    if not plan.parse_calls:
        text = text.strip() if serve.template.strip_answer else text
        return S.AssistantMessage(content=text), finish
    parsed = parse_tool_calls(text, plan.tools)
    content = parsed.content
    if content is not None and serve.template.strip_answer:
        content = content.strip() or None
    if not parsed.calls:
        return S.AssistantMessage(content=content or ""), finish
    calls = [tool_call_out(c) for c in parsed.calls]
    return (S.AssistantMessage(content=content, tool_calls=calls),
            "tool_calls" if finish == "stop" else finish)


def _prompt_ids(serve: ServeState, req: S.ChatCompletionRequest, plan: Plan) -> list[int]:
    """The token ids of the rendered conversation (<|endoftext|> alone for an empty one)."""
    messages = request_messages(req)
    try:
        # A character the model cannot read is reported in the message that holds it.
        check_messages(serve.tokenizer, messages)
        prompt = serve.template.render(messages, plan.tools)
    except LyreError as e:
        raise APIError(400, str(e), param="messages") from None
    try:
        ids = serve.encode_text(prompt, "messages") if prompt else []
    except APIError as e:
        if not plan.tools:
            raise
        # The messages alone were checked above: it is the tool list this model cannot read.
        raise APIError(400, f"tools: this model's vocabulary cannot spell the tool list ({e.message}); "
                       "a model trained on text without JSON's characters cannot be given tools",
                       param="tools", code="invalid_prompt") from None
    if not ids:
        if serve.tokenizer.eot_id is None:
            raise APIError(400, "the messages are empty and this model has no start token",
                           param="messages", code="empty_prompt")
        ids = [serve.tokenizer.eot_id]
    return ids


class ChatChunks:
    """The chunks of a streamed chat answer (a streaming.ChunkMaker). When the request could
    call tools, each choice's text goes through a ToolCallStream first: content outside the
    blocks is sent as content, each call as tool_calls deltas (id and name, then arguments)."""

    def __init__(self, serve: ServeState, cid: str, n: int, plan: Plan | None = None) -> None:
        self.serve, self.cid, self.n = serve, cid, n
        self.created = int(time.time())
        self.trimmers = [AnswerTrimmer(serve.template.strip_answer) for _ in range(n)]
        parse = plan is not None and plan.parse_calls
        self.calls = [ToolCallStream() for _ in range(n)] if parse else None

    def chunk(self, choices: list[S.ChatChunkChoice], usage: S.Usage | None = None) -> S.ChatCompletionChunk:
        return S.ChatCompletionChunk(id=self.cid, created=self.created, model=self.serve.model_name,
                                     choices=choices, usage=usage)

    def opening(self) -> list[S.ChatCompletionChunk]:
        return [self.chunk([S.ChatChunkChoice(index=i, delta=S.ChatDelta(role="assistant", content=""))])
                for i in range(self.n)]

    def piece(self, event: Piece) -> S.ChatCompletionChunk | None:
        raw, deltas = event.text, []
        if self.calls is not None:
            raw, deltas = self.calls[event.index].feed(raw)
        text = self.trimmers[event.index].feed(raw)
        if not text and not deltas and not event.logprobs:
            return None
        logprobs = chat_logprobs(event.logprobs) if event.logprobs else None
        delta = S.ChatDelta(content=text if text or not deltas else None,
                            tool_calls=[_delta(d) for d in deltas] or None)
        return self.chunk([S.ChatChunkChoice(index=event.index, delta=delta, logprobs=logprobs)])

    def done(self, event: Done) -> S.ChatCompletionChunk:
        finish, delta = event.finish_reason, S.ChatDelta()
        if self.calls is not None:
            stream = self.calls[event.index]
            rest = self.trimmers[event.index].feed(stream.finish())
            delta = S.ChatDelta(content=rest or None)
            if stream.count and finish == "stop":
                finish = "tool_calls"
        return self.chunk([S.ChatChunkChoice(index=event.index, delta=delta, finish_reason=finish)])

    def usage(self, usage: S.Usage) -> S.ChatCompletionChunk:
        return self.chunk([], usage)


def _delta(d: CallDelta) -> S.ToolCallDelta:
    if d.name is not None:  # the call's first delta: who is called
        return S.ToolCallDelta(index=d.index, id=d.id, type="function",
                               function=S.FunctionDelta(name=d.name, arguments=d.arguments))
    return S.ToolCallDelta(index=d.index, function=S.FunctionDelta(arguments=d.arguments))
