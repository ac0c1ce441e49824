"""The model list (OpenAI's /v1/models) and the server's own status: /health and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lyre.serve import schemas as S
from lyre.serve.state import ServeState

router = APIRouter(tags=["openai"])  # under /v1: behind the API key when there is one
status_router = APIRouter(tags=["server"])  # public, like the page


@router.get("/v1/models", response_model=S.ModelList, responses=S.error_responses(401))
async def list_models(request: Request):
    return S.ModelList(data=[ServeState.of(request).model_card()])


@router.get("/v1/models/{model}", response_model=S.Model, responses=S.error_responses(401, 404))
async def get_model(model: str, request: Request):
    serve = ServeState.of(request)
    serve.check_model(model)
    return serve.model_card()


@status_router.get("/health", response_model=S.Health)
async def health(request: Request):
    scheduler = ServeState.of(request).scheduler
    st = scheduler.stats()
    return S.Health(status="draining" if scheduler.draining else "ok",
                    model=ServeState.of(request).model_name, active=st["active"],
                    queued=st["queued"], max_batch=st["max_batch"], max_queue=st["max_queue"],
                    steps=st["steps"], generated_tokens=st["generated_tokens"])


@status_router.get(
    "/metrics", response_class=Response,
    responses={200: {"description": "Prometheus metrics in the text exposition format",
                     "content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request):
    body, content_type = ServeState.of(request).metrics.render()
    return Response(body, media_type=content_type)
