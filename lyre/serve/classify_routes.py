"""`lyre serve RUN` for a classifier run: POST /v1/classify, and nothing that generates text.

    curl localhost:8000/v1/classify -H 'Content-Type: application/json' \
         -d '{"input": ["You have won a free prize. Call 09061701461 now", "see you at lunch"]}'
    {"object": "list", "model": "spam",
     "data": [{"object": "classification", "index": 0, "label": "spam", "probability": 0.998,
               "probabilities": {"ham": 0.002, "spam": 0.998}, "tokens": 22, "truncated": false},
              ...],
     "usage": {"prompt_tokens": 28, "total_tokens": 28}}

The request mirrors OpenAI's embeddings and moderations: `input` is one text or a list of
texts, `model` is optional (if given it must be the served one). Errors keep OpenAI's shape
(lyre.serve.errors): an empty text, too many texts or an unknown field is a 400 naming it.
A classifier cannot complete or chat, so those routes answer a 400 that says what it serves.

The model runs in a worker thread (one batch at a time, behind a lock), so the event loop stays
free. The app shares the generation server's error handlers, API key and body-size checks.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, FastAPI, Request, Security
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from lyre.classify.predict import Classifier
from lyre.errors import LyreError
from lyre.serve import schemas as S
from lyre.serve.errors import APIError, install_error_handlers
from lyre.serve.middleware import APIKeyMiddleware, BodyLimitMiddleware
from lyre.serve.settings import ServeSettings

MAX_TEXTS = 256  # texts per request: one request must not hold the model for long

router = APIRouter(tags=["classification"])  # under /v1: behind the API key when there is one
status_router = APIRouter(tags=["server"])

Text = Annotated[str, Field(max_length=1 << 20)]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS)] = Field(
        description=f"One text, or a list of up to {MAX_TEXTS} texts.")
    model: str | None = Field(None, description="Optional: the served model's id (GET /v1/models).")


class Classification(BaseModel):
    object: Literal["classification"] = "classification"
    index: int
    label: str = Field(description="The most probable label.")
    probability: float = Field(description="Its probability (softmax of the head's logits).")
    probabilities: dict[str, float] = Field(description="Every label's, in the run's label order.")
    tokens: int = Field(description="Tokens the model read.")
    truncated: bool = Field(description="The text was longer than the context and lost its end.")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]
    usage: Usage


class ClassifierHealth(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    task: Literal["classify"] = "classify"
    labels: list[str]


@dataclass
class ClassifierState:
    classifier: Classifier
    model_name: str
    created: int = field(default_factory=lambda: int(time.time()))
    lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def of(request: Request) -> ClassifierState:
        return request.app.state.classify

    def card(self) -> S.Model:
        return S.Model(id=self.model_name, created=self.created,
                       context_length=self.classifier.limit, chat_template="none")

    def run(self, texts: list[str]):
        with self.lock:
            return self.classifier.classify(texts)


@router.post("/v1/classify", response_model=ClassifyResponse, responses=S.error_responses(400, 401, 404))
async def classify(body: ClassifyRequest, request: Request):
    state = ClassifierState.of(request)
    if body.model is not None and body.model != state.model_name:
        raise APIError(404, f"the model {body.model!r} does not exist; this server serves "
                       f"{state.model_name!r}", param="model", code="model_not_found")
    texts = [body.input] if isinstance(body.input, str) else body.input
    for i, text in enumerate(texts):
        if not text.strip():
            param = "input" if isinstance(body.input, str) else f"input[{i}]"
            raise APIError(400, f"{param} is empty; give the classifier something to read", param=param)
    try:
        predictions = await asyncio.to_thread(state.run, texts)
    except LyreError as e:
        raise APIError(400, str(e), param="input") from None
    tokens = sum(p.tokens for p in predictions)
    return ClassifyResponse(
        model=state.model_name,
        data=[Classification(index=i, **p.to_dict()) for i, p in enumerate(predictions)],
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
    )


@router.get("/v1/models", response_model=S.ModelList, responses=S.error_responses(401))
async def list_models(request: Request):
    return S.ModelList(data=[ClassifierState.of(request).card()])


@router.post("/v1/completions", responses=S.error_responses(400, 401), include_in_schema=False)
@router.post("/v1/chat/completions", responses=S.error_responses(400, 401), include_in_schema=False)
async def not_generative(request: Request):
    name = ClassifierState.of(request).model_name
    raise APIError(400, f"{name!r} is a classifier: it labels text and cannot complete or chat; "
                   "POST /v1/classify with {\"input\": TEXT or [TEXTS]}", code="unsupported_endpoint")


@status_router.get("/health", response_model=ClassifierHealth)
async def health(request: Request):
    state = ClassifierState.of(request)
    return ClassifierHealth(model=state.model_name, labels=state.classifier.labels)


def create_classify_app(classifier: Classifier, settings: ServeSettings | None = None) -> FastAPI:
    """The app serving a loaded classifier (lyre.classify.predict.Classifier)."""
    settings = settings or ServeSettings()
    app = FastAPI(title="lyre", version="0.1.0", summary="A lyre text classifier",
                  description="POST /v1/classify labels texts; errors use OpenAI's shape.",
                  docs_url=None, redoc_url=None)  # /openapi.json only: Swagger UI needs a CDN
    app.state.classify = ClassifierState(classifier, settings.model_name or Path(classifier.run_dir).name)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout=settings.read_timeout)
    bearer = []
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
        bearer = [Security(HTTPBearer(auto_error=False, description="Authorization: Bearer KEY"))]
    app.include_router(router, dependencies=bearer)
    app.include_router(status_router)
    return app


class _NoScheduler:
    """The generation server drains its scheduler on SIGTERM; a classifier has none."""

    def begin_drain(self) -> None:
        pass


def serve_classifier(classifier: Classifier, host: str = "127.0.0.1", port: int = 8000,
                     settings: ServeSettings | None = None, log_level: str = "info") -> None:
    """Serve a classifier until SIGTERM/SIGINT (`lyre serve RUN` on a classifier run). Blocks."""
    from lyre.serve.server import _check_port, _config, _is_loopback, _log_config, _Server

    settings = settings or ServeSettings()
    _check_port(host, port)
    app = create_classify_app(classifier, settings)
    shown = f"[{host}]" if ":" in host else host
    labels = ", ".join(classifier.labels)
    print(f"lyre serve: classifier {app.state.classify.model_name!r} ({labels}), API key "
          f"{'required' if settings.api_key else 'off'}; POST http://{shown}:{port}/v1/classify",
          file=sys.stderr, flush=True)
    if not settings.api_key and not _is_loopback(host):
        print(f"lyre serve: warning: listening on {host} without an API key", file=sys.stderr, flush=True)
    config = _config(app, host, port, settings, log_level, log_config=_log_config(log_level))
    _Server(config, _NoScheduler()).run()
