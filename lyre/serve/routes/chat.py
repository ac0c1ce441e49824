"""POST /v1/chat/completions: messages rendered with the run's prompt template, an answer back."""

from __future__ import annotations

import asyncio
import secrets
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lyre.chat.templates import AnswerTrimmer, check_messages
from lyre.core.errors import LyreError
from lyre.serve import schemas as S
from lyre.serve.errors import APIError
from lyre.serve.logprobs import chat_logprobs
from lyre.serve.scheduler import Done, Job, Piece
from lyre.serve.state import ServeState
from lyre.serve.streaming import CLIENT_CLOSED, ClientGone, Generation, SSEResponse, usage

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
    ids = await asyncio.to_thread(_prompt_ids, serve, req)
    serve.check_prompt(ids, "messages")
    requested = req.max_completion_tokens or req.max_tokens
    params = serve.sampling(req, serve.max_new_tokens(requested, len(ids)),
                            list(serve.template.stop) + serve.stops(req), bool(req.logprobs),
                            req.top_logprobs or 0)
    gen = Generation(serve.scheduler, [Job(prompt=ids, params=params)],
                     serve.first_token_timer(request, "/v1/chat/completions"))
    await gen.submit()
    serve.metrics.prompt_tokens.inc(len(ids))
    chunks = ChatChunks(serve, f"chatcmpl-{secrets.token_hex(12)}", n)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return SSEResponse(gen.sse(chunks, len(ids), include_usage))
    try:
        answer = await gen.collect(request, n)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    choices = []
    for i, text in enumerate(answer.texts):
        text = text.strip() if serve.template.strip_answer else text
        logprobs = chat_logprobs(answer.logprobs[i]) if req.logprobs else None
        choices.append(S.ChatChoice(index=i, message=S.AssistantMessage(content=text),
                                    finish_reason=answer.finish[i], logprobs=logprobs))
    return S.ChatCompletion(id=chunks.cid, created=chunks.created, model=serve.model_name,
                            choices=choices, usage=usage(len(ids), sum(answer.tokens)))


def _prompt_ids(serve: ServeState, req: S.ChatCompletionRequest) -> list[int]:
    """The token ids of the rendered conversation (<|endoftext|> alone for an empty one)."""
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    try:
        # A character the model cannot read is reported in the message that holds it.
        check_messages(serve.tokenizer, messages)
        prompt = serve.template.render(messages)
    except LyreError as e:
        raise APIError(400, str(e), param="messages") from None
    ids = serve.encode_text(prompt, "messages") if prompt else []
    if not ids:
        if serve.tokenizer.eot_id is None:
            raise APIError(400, "the messages are empty and this model has no start token",
                           param="messages", code="empty_prompt")
        ids = [serve.tokenizer.eot_id]
    return ids


class ChatChunks:
    """The chunks of a streamed chat answer (a streaming.ChunkMaker)."""

    def __init__(self, serve: ServeState, cid: str, n: int) -> None:
        self.serve, self.cid, self.n = serve, cid, n
        self.created = int(time.time())
        self.trimmers = [AnswerTrimmer(serve.template.strip_answer) for _ in range(n)]

    def chunk(self, choices: list[S.ChatChunkChoice], usage: S.Usage | None = None) -> S.ChatCompletionChunk:
        return S.ChatCompletionChunk(id=self.cid, created=self.created, model=self.serve.model_name,
                                     choices=choices, usage=usage)

    def opening(self) -> list[S.ChatCompletionChunk]:
        return [self.chunk([S.ChatChunkChoice(index=i, delta=S.ChatDelta(role="assistant", content=""))])
                for i in range(self.n)]

    def piece(self, event: Piece) -> S.ChatCompletionChunk | None:
        text = self.trimmers[event.index].feed(event.text)
        if not text and not event.logprobs:
            return None
        logprobs = chat_logprobs(event.logprobs) if event.logprobs else None
        return self.chunk([S.ChatChunkChoice(index=event.index, delta=S.ChatDelta(content=text),
                                             logprobs=logprobs)])

    def done(self, event: Done) -> S.ChatCompletionChunk:
        return self.chunk([S.ChatChunkChoice(index=event.index, delta=S.ChatDelta(),
                                             finish_reason=event.finish_reason)])

    def usage(self, usage: S.Usage) -> S.ChatCompletionChunk:
        return self.chunk([], usage)
