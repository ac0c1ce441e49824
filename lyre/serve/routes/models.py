"""The model list (OpenAI's /v1/models) and the server's own status: /health and /metrics.

Both kinds of app serve these (a language model's and a classifier's): they ask the app's state
through the `Served` protocol (lyre.serve.state), never which kind it is.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lyre.serve import schemas as S
from lyre.serve.state import served

router = APIRouter(tags=["openai"])  # under /v1: behind the API key when there is one
status_router = APIRouter(tags=["server"])  # public, like the page


@router.get("/v1/models", response_model=S.ModelList, responses=S.error_responses(401))
async def list_models(request: Request):
    return S.ModelList(data=[served(request).model_card()])


@router.get("/v1/models/{model}", response_model=S.Model, responses=S.error_responses(401, 404))
async def get_model(model: str, request: Request):
    state = served(request)
    state.check_model(model)
    return state.model_card()


@status_router.get("/health", response_model=S.Health | S.ClassifierHealth)
async def health(request: Request):
    return served(request).health()


@status_router.get(
    "/metrics", response_class=Response,
    responses={200: {"description": "Prometheus metrics in the text exposition format",
                     "content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request):
    body, content_type = served(request).metrics.render()
    return Response(body, media_type=content_type)
