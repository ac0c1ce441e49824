"""The FastAPI app: OpenAI-compatible routes, the chat page, /health.

    app = create_app(load_run("runs/iliad-char"), ServeSettings(api_key="secret"))

Handlers never run the model: they validate, tokenize (in a worker thread), hand a job to the
scheduler (lyre.serve.scheduler) and await its events, so the event loop stays free for other
clients while the scheduler's thread runs the batched decode steps.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import FastAPI, Request, Security
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles

from lyre.chat import AnswerTrimmer, get_template, template_name_for_run
from lyre.engine import Engine, SamplingConfig, sampling
from lyre.errors import LyreError
from lyre.serve import schemas as S
from lyre.serve.errors import APIError, install_error_handlers
from lyre.serve.middleware import APIKeyMiddleware, BodyLimitMiddleware
from lyre.serve.scheduler import Done, Failed, Job, Piece, Scheduler, SchedulerSettings

STATIC_DIR = Path(__file__).parent / "static"
KEEPALIVE_S = 5.0  # an SSE comment this often while a request waits in the queue
GREEDY_BELOW = 1e-5  # temperatures below this sample greedily (as vLLM)
CLIENT_CLOSED = 499  # nginx's "client closed request": logged, never seen by anyone


class ClientGone(Exception):
    """The client of a non-streamed request disconnected before its answer was ready."""


@dataclass
class ServeSettings:
    model_name: str | None = None  # default: the run directory's name
    api_key: str | None = None
    max_batch: int = 32  # choices decoded together in one step
    max_queue: int = 64  # requests waiting for a slot before 429
    max_body_bytes: int = 1 << 20
    chat_template: str | None = None  # default: the run's (chat.json / config.json) or "plain"
    shutdown_timeout: float = 10.0  # seconds in-flight requests get to finish on SIGTERM
    # At the end of the context: "stop" (finish_reason "length", OpenAI's rule: prompt and answer
    # share the context) or "slide" (keep generating on the last block_size tokens).
    overflow: str = "stop"

    def validate(self) -> None:
        if self.max_batch < 1:
            raise LyreError(f"--max-batch must be >= 1; got {self.max_batch}")
        if self.max_queue < 0:
            raise LyreError(f"--max-queue must be >= 0; got {self.max_queue}")
        if self.max_body_bytes < 1024:
            raise LyreError(f"--max-body-bytes must be >= 1024; got {self.max_body_bytes}")
        if self.shutdown_timeout < 0:
            raise LyreError(f"--shutdown-timeout must be >= 0; got {self.shutdown_timeout}")
        if self.api_key is not None and not self.api_key.strip():
            raise LyreError("--api-key is empty; give a key or leave it out")
        if self.chat_template is not None:
            get_template(self.chat_template)
        if self.overflow not in ("stop", "slide"):
            raise LyreError(f"--context-overflow must be stop or slide; got {self.overflow!r}")


_ERROR_TEXT = {
    400: "Malformed JSON, a parameter out of range, or a prompt longer than the context",
    401: "Missing or wrong API key (only when the server has one)",
    404: "Unknown model",
    413: "Request body over the size limit",
    429: "Queue full; retry after the Retry-After header's seconds",
    503: "Server shutting down; retry after the Retry-After header's seconds",
}


def _errors(*codes: int) -> dict:
    return {code: {"model": S.ErrorResponse, "description": _ERROR_TEXT[code]} for code in codes}


_GEN_ERRORS = (400, 401, 404, 413, 429, 503)


def _sse_200(model: type) -> dict:
    return {200: {"model": model, "description": "A JSON body, or with `stream: true` "
                  "server-sent events of chunks ending in `data: [DONE]`",
                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


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


def create_app(run, settings: ServeSettings | None = None, *, scheduler: Scheduler | None = None) -> FastAPI:
    """The app serving `run` (a lyre.runs.LoadedRun)."""
    settings = settings or ServeSettings()
    model_name = settings.model_name or Path(run.run_dir).name
    template = get_template(settings.chat_template or template_name_for_run(run.run_dir))
    tokenizer = run.tokenizer
    block_size = run.config.model.block_size
    created = int(time.time())
    if scheduler is None:
        scheduler = Scheduler(
            Engine(run.model, tokenizer, device=run.device),
            settings=SchedulerSettings(max_batch=settings.max_batch, max_queue=settings.max_queue),
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.stop, settings.shutdown_timeout)

    app = FastAPI(
        title="lyre",
        version="0.1.0",
        summary="An OpenAI-compatible server for a lyre model",
        description=(
            "Completions and chat completions with the OpenAI request and response shapes, "
            "streamed as server-sent events with `stream: true`. lyre extras: `top_k` and "
            "`repetition_penalty`. Errors use OpenAI's `{\"error\": {...}}` shape."
        ),
        lifespan=lifespan,
    )
    app.state.scheduler = scheduler
    app.state.settings = settings
    app.state.model_name = model_name
    app.state.template = template.name
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
        # The check itself is the middleware (it answers before the body is read); this
        # dependency only declares the scheme so /openapi.json documents it.
        bearer = [Security(HTTPBearer(auto_error=False, description="Authorization: Bearer KEY"))]
    else:
        bearer = []

    # ------------------------------------------------------------------------------------------
    # helpers

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")

    def check_common(req: S._SamplingFields) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(req, name):
                raise APIError(400, f"{name} is not supported; use repetition_penalty (lyre extra)",
                               param=name, code="unsupported_parameter")

    def stops_of(req: S._SamplingFields) -> list[str]:
        if req.stop is None:
            return []
        return [req.stop] if isinstance(req.stop, str) else list(req.stop)

    def params_of(req: S._SamplingFields, max_new_tokens: int, stop: list[str], logprobs: bool) -> SamplingConfig:
        temperature = sampling.DEFAULT_TEMPERATURE if req.temperature is None else req.temperature
        if temperature < GREEDY_BELOW:  # the limit T -> 0 is greedy; dividing by ~0 gives inf
            temperature = 0.0
        params = SamplingConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            # Fields the request leaves out take lyre's defaults (lyre.engine.sampling).
            top_p=sampling.DEFAULT_TOP_P if req.top_p is None else req.top_p,
            top_k=sampling.DEFAULT_TOP_K if req.top_k is None else req.top_k,
            repetition_penalty=(sampling.DEFAULT_REPETITION_PENALTY if req.repetition_penalty is None
                                else req.repetition_penalty),
            stop=tuple(stop),
            num_samples=req.n or 1,
            seed=req.seed,
            logprobs=logprobs,
            overflow=settings.overflow,
        )
        try:
            return scheduler.engine.check_params(params)
        except LyreError as e:
            raise APIError(400, str(e), code="invalid_value") from None

    def check_prompt(ids: list[int], param: str) -> None:
        if not ids:
            raise APIError(400, "the prompt is empty", param=param, code="empty_prompt")
        if len(ids) >= block_size:
            raise APIError(
                400,
                f"this model's context is {block_size} tokens; the prompt has {len(ids)} tokens and "
                "leaves no room for an answer: shorten it",
                param=param, code="context_length_exceeded",
            )
        bad = next((i for i in ids if not 0 <= i < tokenizer.vocab_size), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the vocabulary (0..{tokenizer.vocab_size - 1})",
                           param=param, code="invalid_token_id")

    def max_new_of(requested: int | None, prompt_len: int) -> int:
        if settings.overflow == "slide":  # the window slides: any length up to the engine's limit
            return requested or block_size - prompt_len
        room = block_size - prompt_len  # OpenAI's rule: the context holds prompt and answer
        return room if requested is None else min(requested, room)

    async def submit(jobs: list[Job]) -> None:
        queue: asyncio.Queue = asyncio.Queue()  # one queue for all choices of a request
        try:
            for job in jobs:
                job.events = queue
                scheduler.submit(job)
        except APIError:
            for job in jobs:
                scheduler.cancel(job)
            raise

    async def events_of(jobs: list[Job], watcher: asyncio.Task | None = None) -> AsyncIterator[object]:
        """Events of a request's jobs (they share one queue) until every choice is done or one
        failed; None after KEEPALIVE_S without any (for SSE keep-alives). Ends with ClientGone
        as soon as `watcher` (a disconnect watcher) finishes. However it ends, the jobs are
        cancelled, which frees their rows at the scheduler's next step."""
        queue = jobs[0].events
        remaining = sum(job.n for job in jobs)
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
                yield event
                if isinstance(event, Failed):
                    return
        finally:
            for job in jobs:
                scheduler.cancel(job)

    async def collect(jobs: list[Job], request: Request, n_choices: int):
        """Every choice's text, token count, finish reason and log-probs (non-streamed answers).
        Raises ClientGone when the client disconnects first."""
        texts = [""] * n_choices
        tokens = [0] * n_choices
        finish: list[str | None] = [None] * n_choices
        logprobs: list[list] = [[] for _ in range(n_choices)]
        watcher = asyncio.create_task(_wait_disconnect(request))
        try:
            async for event in events_of(jobs, watcher):
                if isinstance(event, Piece):
                    texts[event.index] += event.text
                    tokens[event.index] = event.tokens
                    if event.logprobs:
                        logprobs[event.index] += event.logprobs
                elif isinstance(event, Done):
                    finish[event.index] = event.finish_reason
                    tokens[event.index] = event.tokens
                elif isinstance(event, Failed):
                    raise APIError(event.status, event.message, code=event.code,
                                   headers=event.headers)
        finally:
            watcher.cancel()
        return texts, tokens, finish, logprobs

    # ------------------------------------------------------------------------------------------
    # routes

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return RedirectResponse("/static/favicon.svg")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health", response_model=S.Health, tags=["server"])
    async def health():
        st = scheduler.stats()
        return S.Health(status="draining" if scheduler.draining else "ok", model=model_name,
                        active=st["active"], queued=st["queued"], max_batch=st["max_batch"],
                        max_queue=st["max_queue"], steps=st["steps"],
                        generated_tokens=st["generated_tokens"])

    def model_card() -> S.Model:
        return S.Model(id=model_name, created=created, context_length=block_size,
                       chat_template=template.name)

    @app.get("/v1/models", response_model=S.ModelList, responses=_errors(401), tags=["openai"],
             dependencies=bearer)
    async def list_models():
        return S.ModelList(data=[model_card()])

    @app.get("/v1/models/{model}", response_model=S.Model, responses=_errors(401, 404), tags=["openai"],
             dependencies=bearer)
    async def get_model(model: str):
        check_model(model)
        return model_card()

    @app.post("/v1/completions", response_model=S.Completion, tags=["openai"],
              responses={**_sse_200(S.Completion), **_errors(*_GEN_ERRORS)}, dependencies=bearer)
    async def completions(req: S.CompletionRequest, request: Request):
        check_model(req.model)
        check_common(req)
        n = req.n or 1
        if req.best_of is not None and req.best_of != n:
            raise APIError(400, "best_of must equal n (or be left out)", param="best_of",
                           code="unsupported_parameter")
        if req.logit_bias:
            raise APIError(400, "logit_bias is not supported", param="logit_bias",
                           code="unsupported_parameter")
        prompts = await asyncio.to_thread(_encode_prompts, tokenizer, req.prompt)
        for ids in prompts:
            check_prompt(ids, "prompt")
        if len(prompts) * n > S.MAX_N:
            raise APIError(400, f"prompts x n must be at most {S.MAX_N}", param="n")
        want_logprobs = req.logprobs is not None
        jobs = [Job(prompt=ids, first_index=i * n,
                    params=params_of(req, max_new_of(req.max_tokens, len(ids)), stops_of(req), want_logprobs))
                for i, ids in enumerate(prompts)]
        await submit(jobs)
        echo = [(_decode(tokenizer, ids) if req.echo else "") for ids in prompts]
        prompt_tokens = sum(len(ids) for ids in prompts)
        cid = f"cmpl-{secrets.token_hex(12)}"
        now = int(time.time())
        n_choices = len(prompts) * n
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return SSEResponse(completion_stream(jobs, cid, now, echo, n, prompt_tokens, include_usage))
        try:
            texts, tokens, finish, lps = await collect(jobs, request, n_choices)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        choices = []
        for i in range(n_choices):
            logprobs = None
            if want_logprobs:
                offsets, at = [], len(echo[i // n])
                for tok, _, _ in lps[i]:
                    offsets.append(at)
                    at += len(tok)
                logprobs = S.CompletionLogprobs(tokens=[t for t, _, _ in lps[i]],
                                                token_logprobs=[lp for _, lp, _ in lps[i]],
                                                text_offset=offsets)
            choices.append(S.CompletionChoice(index=i, text=echo[i // n] + texts[i],
                                              finish_reason=finish[i], logprobs=logprobs))
        completion_tokens = sum(tokens)
        return S.Completion(id=cid, created=now, model=model_name, choices=choices,
                            usage=S.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                          total_tokens=prompt_tokens + completion_tokens))

    @app.post("/v1/chat/completions", response_model=S.ChatCompletion, tags=["openai"],
              responses={**_sse_200(S.ChatCompletion), **_errors(*_GEN_ERRORS)}, dependencies=bearer)
    async def chat_completions(req: S.ChatCompletionRequest, request: Request):
        check_model(req.model)
        check_common(req)
        if req.max_tokens is not None and req.max_completion_tokens is not None \
                and req.max_tokens != req.max_completion_tokens:
            raise APIError(400, "max_tokens and max_completion_tokens differ; give one",
                           param="max_completion_tokens")
        n = req.n or 1
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        try:
            prompt_text = template.render(messages)
        except LyreError as e:
            raise APIError(400, str(e), param="messages") from None
        ids = await asyncio.to_thread(tokenizer.encode, prompt_text) if prompt_text else []
        if not ids:
            if tokenizer.eot_id is None:
                raise APIError(400, "the messages are empty and this model has no start token",
                               param="messages", code="empty_prompt")
            ids = [tokenizer.eot_id]
        check_prompt(ids, "messages")
        requested = req.max_completion_tokens or req.max_tokens
        job = Job(prompt=ids, params=params_of(req, max_new_of(requested, len(ids)),
                                               list(template.stop) + stops_of(req), bool(req.logprobs)))
        await submit([job])
        cid = f"chatcmpl-{secrets.token_hex(12)}"
        now = int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return SSEResponse(chat_stream(job, cid, now, n, len(ids), include_usage))
        try:
            texts, tokens, finish, lps = await collect([job], request, n)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        choices = []
        for i in range(n):
            text = texts[i].strip() if template.strip_answer else texts[i]
            logprobs = None
            if req.logprobs:
                logprobs = S.ChoiceLogprobs(content=[
                    S.TokenLogprob(token=t, logprob=lp, bytes=list(raw)) for t, lp, raw in lps[i]])
            choices.append(S.ChatChoice(index=i, message=S.AssistantMessage(content=text),
                                        finish_reason=finish[i], logprobs=logprobs))
        completion_tokens = sum(tokens)
        return S.ChatCompletion(id=cid, created=now, model=model_name, choices=choices,
                                usage=S.Usage(prompt_tokens=len(ids), completion_tokens=completion_tokens,
                                              total_tokens=len(ids) + completion_tokens))

    def _model_chunk(obj) -> str:
        return "data: " + obj.model_dump_json(exclude_none=False) + "\n\n"

    async def completion_stream(jobs, cid, now, echo, n, prompt_tokens, include_usage):
        tokens: dict[int, int] = {}
        offsets: dict[int, int] = {}  # text offset of each choice's next token (logprobs)
        if any(echo):
            for i in range(len(jobs) * n):
                chunk = S.Completion(id=cid, created=now, model=model_name, choices=[
                    S.CompletionChoice(index=i, text=echo[i // n])])
                yield _model_chunk(chunk)
        async for event in events_of(jobs):
            if event is None:
                yield ": keep-alive\n\n"
                continue
            if isinstance(event, Failed):
                yield "data: " + json.dumps(APIError(event.status, event.message, code=event.code).body()) + "\n\n"
                break
            if isinstance(event, Piece):
                tokens[event.index] = event.tokens
                if not event.text and not event.logprobs:
                    continue
                logprobs = None
                if event.logprobs:
                    at = offsets.get(event.index, len(echo[event.index // n]))
                    starts = []
                    for tok, _, _ in event.logprobs:
                        starts.append(at)
                        at += len(tok)
                    offsets[event.index] = at
                    logprobs = S.CompletionLogprobs(tokens=[t for t, _, _ in event.logprobs],
                                                    token_logprobs=[lp for _, lp, _ in event.logprobs],
                                                    text_offset=starts)
                choice = S.CompletionChoice(index=event.index, text=event.text, logprobs=logprobs)
            else:
                tokens[event.index] = event.tokens
                choice = S.CompletionChoice(index=event.index, text="", finish_reason=event.finish_reason)
            yield _model_chunk(S.Completion(id=cid, created=now, model=model_name, choices=[choice]))
        if include_usage:
            done = sum(tokens.values())
            usage = S.Usage(prompt_tokens=prompt_tokens, completion_tokens=done,
                            total_tokens=prompt_tokens + done)
            yield _model_chunk(S.Completion(id=cid, created=now, model=model_name, choices=[],
                                            usage=usage))
        yield "data: [DONE]\n\n"

    async def chat_stream(job, cid, now, n, prompt_tokens, include_usage):
        def chunk(choices, usage=None) -> str:
            return _model_chunk(S.ChatCompletionChunk(id=cid, created=now, model=model_name,
                                                      choices=choices, usage=usage))

        trimmers = [AnswerTrimmer(template.strip_answer) for _ in range(n)]
        tokens = [0] * n
        for i in range(n):
            yield chunk([S.ChatChunkChoice(index=i, delta=S.ChatDelta(role="assistant", content=""))])
        async for event in events_of([job]):
            if event is None:
                yield ": keep-alive\n\n"
                continue
            if isinstance(event, Failed):
                yield "data: " + json.dumps(APIError(event.status, event.message, code=event.code).body()) + "\n\n"
                break
            tokens[event.index] = event.tokens
            if isinstance(event, Piece):
                text = trimmers[event.index].feed(event.text)
                if not text and not event.logprobs:
                    continue
                logprobs = None
                if event.logprobs:
                    logprobs = S.ChoiceLogprobs(content=[
                        S.TokenLogprob(token=t, logprob=lp, bytes=list(raw)) for t, lp, raw in event.logprobs])
                yield chunk([S.ChatChunkChoice(index=event.index, delta=S.ChatDelta(content=text),
                                               logprobs=logprobs)])
            else:
                yield chunk([S.ChatChunkChoice(index=event.index, delta=S.ChatDelta(),
                                               finish_reason=event.finish_reason)])
        if include_usage:
            done = sum(tokens)
            yield chunk([], S.Usage(prompt_tokens=prompt_tokens, completion_tokens=done,
                                    total_tokens=prompt_tokens + done))
        yield "data: [DONE]\n\n"

    def openapi() -> dict:
        # Bad requests are answered 400 (OpenAI's code), never FastAPI's default 422: drop the
        # 422 responses and their schemas so the document matches what the server does.
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                                 description=app.description, routes=app.routes)
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


# ----------------------------------------------------------------------------------------------


async def _wait_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids)


def _encode_prompts(tokenizer, prompt) -> list[list[int]]:
    if isinstance(prompt, str):
        return [_encode_text(tokenizer, prompt)]
    if prompt and isinstance(prompt[0], int):
        return [list(prompt)]
    return [_encode_text(tokenizer, p) if isinstance(p, str) else list(p) for p in prompt]


def _encode_text(tokenizer, text: str) -> list[int]:
    if not text:  # an empty prompt starts from <|endoftext|> when the model has it
        return [tokenizer.eot_id] if tokenizer.eot_id is not None else []
    try:
        return tokenizer.encode(text)
    except LyreError as e:  # e.g. a character a char-level model never saw
        raise APIError(400, str(e), param="prompt", code="invalid_prompt") from None
