"""The FastAPI app: OpenAI-compatible routes, the chat page, /health, /metrics, /docs.

    app = create_app(load_run("runs/iliad-char"), ServeSettings(api_key="secret"))

create_app only assembles: the run's state (ServeState, in app.state.serve), the scheduler's
lifetime, the middlewares and the routers of lyre.serve.routes. Handlers never run the model:
they validate, tokenize (in a worker thread), hand jobs to the scheduler (lyre.serve.scheduler)
and await its events (lyre.serve.streaming), so the event loop stays free for other clients
while the scheduler's thread runs the batched decode steps.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Security
from fastapi.security import HTTPBearer

from lyre.chat import get_template, template_name_for_run
from lyre.engine import Engine
from lyre.serve.errors import install_error_handlers
from lyre.serve.metrics import ServeMetrics
from lyre.serve.middleware import AccessMiddleware, APIKeyMiddleware, BodyLimitMiddleware
from lyre.serve.routes import chat, completions, embeddings, models, page
from lyre.serve.scheduler import Scheduler, SchedulerSettings
from lyre.serve.settings import ServeSettings
from lyre.serve.state import ServeState

__all__ = ["ServeSettings", "create_app"]

DESCRIPTION = (
    "Completions and chat completions with the OpenAI request and response shapes, streamed as "
    "server-sent events with `stream: true`. lyre extras: `top_k` and `repetition_penalty`. "
    "Errors use OpenAI's `{\"error\": {...}}` shape. Prometheus metrics at `/metrics`."
)


def create_app(run, settings: ServeSettings | None = None, *, scheduler: Scheduler | None = None) -> FastAPI:
    """The app serving `run` (a lyre.runs.LoadedRun)."""
    settings = settings or ServeSettings()
    if scheduler is None:
        scheduler = Scheduler(
            Engine(run.model, run.tokenizer, device=run.device),
            settings=SchedulerSettings(max_batch=settings.max_batch, max_queue=settings.max_queue),
        )
    serve = ServeState(
        settings=settings, scheduler=scheduler, tokenizer=run.tokenizer,
        template=get_template(settings.chat_template or template_name_for_run(run.run_dir)),
        model_name=settings.model_name or Path(run.run_dir).name,
        block_size=run.config.model.block_size, created=int(time.time()),
        metrics=ServeMetrics(scheduler),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.stop, settings.shutdown_timeout)

    app = FastAPI(title="lyre", version="0.1.0", summary="An OpenAI-compatible server for a lyre model",
                  description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serve = serve
    # The names tests, the CLI and older callers read.
    app.state.scheduler, app.state.settings = scheduler, settings
    app.state.model_name, app.state.template = serve.model_name, serve.template.name
    install_error_handlers(app)
    # Added innermost first: the access log sees every request, 401s and 413s included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       timeout=settings.read_timeout)
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
        # The check itself is the middleware (it answers before the body is read); this
        # dependency only declares the scheme so /openapi.json documents it.
        bearer = [Security(HTTPBearer(auto_error=False, description="Authorization: Bearer KEY"))]
    else:
        bearer = []
    api = [models.router, completions.router, chat.router, embeddings.router]
    if settings.rag_index:  # `lyre serve RUN --rag IDX`: the index opens now (errors before serving)
        from lyre.serve.routes import rag

        api.append(rag.install(app, run, scheduler, serve.template.name, serve.model_name,
                               settings.rag_index, settings.rag_embedder))
    routers = [*api, models.status_router, page.router]
    app.add_middleware(AccessMiddleware, metrics=serve.metrics,
                       routes=[route for router in routers for route in router.routes],
                       mounts=page.MOUNTS)

    for router in api:  # the OpenAI API (and lyre's), under /v1
        app.include_router(router, dependencies=bearer)
    app.include_router(models.status_router)
    app.include_router(page.router)
    page.mount_static(app)
    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    # Bad requests are answered 400 (OpenAI's code), never FastAPI's default 422: drop the 422
    # responses and their schemas so the document matches what the server does.
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
