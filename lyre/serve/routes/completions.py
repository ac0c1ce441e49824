"""POST /v1/completions: text in, text out (OpenAI's legacy completions API)."""

from __future__ import annotations

import asyncio
import secrets
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lyre.serve import schemas as S
from lyre.serve.errors import APIError
from lyre.serve.logprobs import completion_logprobs
from lyre.serve.scheduler import Done, Job, Piece
from lyre.serve.state import ServeState
from lyre.serve.streaming import CLIENT_CLOSED, ClientGone, Generation, SSEResponse, usage
from lyre.serve.structured import compile_plan, completion_plan

router = APIRouter(tags=["openai"])


@router.post("/v1/completions", response_model=S.Completion,
             responses={**S.sse_responses(S.Completion), **S.error_responses(*S.GENERATION_ERRORS)})
async def completions(req: S.CompletionRequest, request: Request):
    serve = ServeState.of(request)
    serve.check_model(req.model)
    serve.check_common(req)
    n = req.n or 1
    if req.best_of is not None and req.best_of != n:
        raise APIError(400, "best_of must equal n (or be left out)", param="best_of",
                       code="unsupported_parameter")
    if req.logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias",
                       code="unsupported_parameter")
    plan = completion_plan(req)
    prompts = await asyncio.to_thread(serve.encode_prompts, req.prompt)
    for ids in prompts:
        serve.check_prompt(ids, "prompt")
    if len(prompts) * n > S.MAX_N:
        raise APIError(400, f"prompts x n must be at most {S.MAX_N}", param="n")
    await compile_plan(plan, serve.tokenizer)
    want_logprobs = req.logprobs is not None
    jobs = [Job(prompt=ids, first_index=i * n,
                params=serve.sampling(req, serve.max_new_tokens(req.max_tokens, len(ids)),
                                      serve.stops(req), want_logprobs, req.logprobs or 0,
                                      plan.constraint))
            for i, ids in enumerate(prompts)]
    gen = Generation(serve.scheduler, jobs, serve.first_token_timer(request, "/v1/completions"))
    await gen.submit()
    prompt_tokens = sum(len(ids) for ids in prompts)
    serve.metrics.prompt_tokens.inc(prompt_tokens)
    echo = [(serve.tokenizer.decode(ids) if req.echo else "") for ids in prompts]
    chunks = CompletionChunks(serve, f"cmpl-{secrets.token_hex(12)}", echo, n, req.logprobs)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return SSEResponse(gen.sse(chunks, prompt_tokens, include_usage))
    try:
        answer = await gen.collect(request, len(prompts) * n)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    choices = []
    for i, text in enumerate(answer.texts):
        logprobs = None
        if want_logprobs:
            logprobs = completion_logprobs(answer.logprobs[i], len(echo[i // n]), req.logprobs)
        choices.append(S.CompletionChoice(index=i, text=echo[i // n] + text,
                                          finish_reason=answer.finish[i], logprobs=logprobs))
    return chunks.completion(choices, usage(prompt_tokens, sum(answer.tokens)))


class CompletionChunks:
    """The completion of one request, and the chunks of its stream (a streaming.ChunkMaker)."""

    def __init__(self, serve: ServeState, cid: str, echo: list[str], n: int,
                 logprobs: int | None) -> None:
        self.serve, self.cid, self.echo, self.n, self.logprobs = serve, cid, echo, n, logprobs
        self.created = int(time.time())
        self.offsets: dict[int, int] = {}  # text offset of each choice's next token (logprobs)

    def completion(self, choices: list[S.CompletionChoice], usage: S.Usage | None = None) -> S.Completion:
        return S.Completion(id=self.cid, created=self.created, model=self.serve.model_name,
                            choices=choices, usage=usage)

    def opening(self) -> list[S.Completion]:
        if not any(self.echo):
            return []
        return [self.completion([S.CompletionChoice(index=i, text=self.echo[i // self.n])])
                for i in range(len(self.echo) * self.n)]

    def piece(self, event: Piece) -> S.Completion | None:
        if not event.text and not event.logprobs:
            return None
        logprobs = None
        if event.logprobs:
            at = self.offsets.get(event.index, len(self.echo[event.index // self.n]))
            logprobs = completion_logprobs(event.logprobs, at, self.logprobs or 0)
            self.offsets[event.index] = at + sum(len(e.token) for e in event.logprobs)
        return self.completion([S.CompletionChoice(index=event.index, text=event.text,
                                                   logprobs=logprobs)])

    def done(self, event: Done) -> S.Completion:
        return self.completion([S.CompletionChoice(index=event.index, text="",
                                                   finish_reason=event.finish_reason)])

    def usage(self, usage: S.Usage) -> S.Completion:
        return self.completion([], usage)
