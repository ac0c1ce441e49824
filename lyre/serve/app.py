"""The FastAPI app: one builder for both kinds of run.

    app = create_app(load_run("runs/iliad-char"), ServeSettings(api_key="secret"))
    app = create_app(load_classifier("runs/spam"))         # POST /v1/classify
    app = create_app(load_served("runs/whatever"))         # either, as `lyre serve` does

A language model gets the OpenAI routes (completions, chat, embeddings, --rag) and the chat
page; a classifier gets /v1/classify and a page that says how to call it. Everything else is
the same for both, assembled here once: the error handlers, the access log and request metrics,
the API key, the body limits, /v1/models, /health, /metrics, /docs and the state's lifetime.

create_app only assembles: the run's state (ServeState or ClassifierState, in app.state.serve),
its lifetime (the scheduler's thread), the middlewares and the routers of lyre.serve.routes.
Handlers never run the model on the event loop: they validate, tokenize (in a worker thread),
hand jobs to the scheduler (lyre.serve.scheduler) and await its events (lyre.serve.streaming),
or run the classifier in a worker thread, so the loop stays free for other clients.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, Security
from fastapi.security import HTTPBearer

from lyre.chat.templates import get_template, template_name_for_run
from lyre.classify.predict import Classifier, load_classifier
from lyre.core.errors import LyreError
from lyre.engine import Engine
from lyre.generate.runs import LoadedRun, load_run
from lyre.run.rundir import RunDir
from lyre.serve.errors import install_error_handlers
from lyre.serve.metrics import ServeMetrics
from lyre.serve.middleware import AccessMiddleware, APIKeyMiddleware, BodyLimitMiddleware
from lyre.serve.routes import chat, classify, completions, embeddings, models, page
from lyre.serve.scheduler import Scheduler, SchedulerSettings
from lyre.serve.settings import ServeSettings
from lyre.serve.state import ClassifierState, Served, ServeState

__all__ = ["ServeSettings", "create_app", "load_served"]

DESCRIPTION = (
    "Completions and chat completions with the OpenAI request and response shapes, streamed as "
    "server-sent events with `stream: true`. lyre extras: `top_k` and `repetition_penalty`. "
    "Errors use OpenAI's `{\"error\": {...}}` shape. Prometheus metrics at `/metrics`."
)
CLASSIFY_DESCRIPTION = (
    "POST /v1/classify labels texts (one or a list); errors use OpenAI's `{\"error\": {...}}` "
    "shape. Prometheus metrics at `/metrics`."
)


def load_served(run_dir: str | Path, checkpoint: str = "best", device: str = "auto",
                weights: str = "fp32") -> LoadedRun | Classifier:
    """What `lyre serve RUN_DIR` serves: the classifier of a classifier run (lyre.classify's
    loader, the one `lyre classify` uses), else the language model (lyre.generate.runs.load_run)."""
    if RunDir(run_dir).kind() == "classify":
        return load_classifier(run_dir, checkpoint, device)
    return load_run(run_dir, checkpoint, device, weights=weights)


def create_app(run: LoadedRun | Classifier, settings: ServeSettings | None = None, *,
               scheduler: Scheduler | None = None) -> FastAPI:
    """The app serving `run`: a lyre.generate.runs.LoadedRun, or a lyre.classify.predict.Classifier."""
    settings = settings or ServeSettings()
    if isinstance(run, Classifier):
        if settings.rag_index or settings.tools:
            raise LyreError(f"{'--rag' if settings.rag_index else '--tools'} needs a language "
                            "model; this run is a classifier")
        state = ClassifierState(settings=settings, classifier=run,
                                model_name=settings.model_name or Path(run.run_dir).name,
                                metrics=ServeMetrics())
        app = _new_app(state, "A lyre text classifier", CLASSIFY_DESCRIPTION)
        return _assemble(app, state, [models.router, classify.router], page.classify_router)

    if scheduler is None:
        scheduler = Scheduler(
            Engine(run.model, run.tokenizer, device=run.device),
            settings=SchedulerSettings(max_batch=settings.max_batch, max_queue=settings.max_queue),
        )
    state = ServeState(
        settings=settings, scheduler=scheduler, tokenizer=run.tokenizer,
        template=get_template(settings.chat_template or template_name_for_run(run.run_dir)),
        model_name=settings.model_name or Path(run.run_dir).name,
        block_size=run.config.model.block_size, created=int(time.time()),
        metrics=ServeMetrics(scheduler),
    )
    app = _new_app(state, "An OpenAI-compatible server for a lyre model", DESCRIPTION)
    # The names tests, the CLI and older callers read.
    app.state.scheduler = scheduler
    app.state.template = state.template.name
    api = [models.router, completions.router, chat.router, embeddings.router]
    if settings.rag_index:  # `lyre serve RUN --rag IDX`: the index opens now (errors before serving)
        from lyre.serve.routes import rag

        api.append(rag.install(app, run, scheduler, state.template.name, state.model_name,
                               settings.rag_index, settings.rag_embedder))
    if settings.tools:  # `lyre serve RUN --tools ...`: the tools open now (errors before serving)
        from lyre.serve.routes import agent

        api.append(agent.install(app, run, scheduler, state.template, state.model_name,
                                 settings.tools))
    return _assemble(app, state, api, page.chat_router)


def _new_app(state: Served, summary: str, description: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.stop, state.settings.shutdown_timeout)

    app = FastAPI(title="lyre", version="0.1.0", summary=summary, description=description,
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serve = state
    app.state.settings, app.state.model_name = state.settings, state.model_name
    return app


def _assemble(app: FastAPI, state: Served, api: list[APIRouter], index: APIRouter) -> FastAPI:
    """What every app has: error handlers, middlewares, `api` under /v1 (behind the API key),
    /health, /metrics, the page `index` at /, /docs and the static files."""
    settings = state.settings
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
    routers = [*api, models.status_router, index, page.router]
    app.add_middleware(AccessMiddleware, metrics=state.metrics,
                       routes=[route for router in routers for route in router.routes],
                       mounts=page.MOUNTS)
    for router in api:  # the OpenAI API (and lyre's), under /v1
        app.include_router(router, dependencies=bearer)
    for router in (models.status_router, index, page.router):  # public
        app.include_router(router)
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
