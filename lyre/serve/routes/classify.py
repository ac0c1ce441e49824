"""POST /v1/classify: what a classifier run serves (`lyre serve RUN` on one), and nothing that
generates text.

    curl localhost:8000/v1/classify -H 'Content-Type: application/json' \
         -d '{"input": ["You have won a free prize. Call 09061701461 now", "see you at lunch"]}'
    {"object": "list", "model": "spam",
     "data": [{"object": "classification", "index": 0, "label": "spam", "probability": 0.998,
               "probabilities": {"ham": 0.002, "spam": 0.998}, "tokens": 22, "truncated": false},
              ...],
     "usage": {"prompt_tokens": 28, "total_tokens": 28}}

The request mirrors OpenAI's embeddings and moderations: `input` is one text or a list of
texts, `model` is optional (if given it must be the served one). Errors keep OpenAI's shape: an
empty text, too many texts or an unknown field is a 400 naming it. A classifier cannot complete
or chat, so those routes answer a 400 that says what it serves. The predictions are
lyre.classify.predict's (ClassifierState.classify runs them in a worker thread).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from lyre.serve import schemas as S
from lyre.serve.errors import APIError
from lyre.serve.state import ClassifierState

router = APIRouter(tags=["classification"])  # under /v1: behind the API key when there is one


@router.post("/v1/classify", response_model=S.ClassifyResponse,
             responses=S.error_responses(400, 401, 404, 413, 503))
async def classify(body: S.ClassifyRequest, request: Request):
    state = ClassifierState.of(request)
    if body.model is not None:
        state.check_model(body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    for i, text in enumerate(texts):
        if not text.strip():
            param = "input" if isinstance(body.input, str) else f"input[{i}]"
            raise APIError(400, f"{param} is empty; give the classifier something to read", param=param)
    predictions = await state.classify(texts)
    tokens = sum(p.tokens for p in predictions)
    return S.ClassifyResponse(
        model=state.model_name,
        data=[S.Classification(index=i, **p.to_dict()) for i, p in enumerate(predictions)],
        usage=S.ClassifyUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


@router.post("/v1/completions", responses=S.error_responses(400, 401), include_in_schema=False)
@router.post("/v1/chat/completions", responses=S.error_responses(400, 401), include_in_schema=False)
async def not_generative(request: Request):
    name = ClassifierState.of(request).model_name
    raise APIError(400, f"{name!r} is a classifier: it labels text and cannot complete or chat; "
                   "POST /v1/classify with {\"input\": TEXT or [TEXTS]}", code="unsupported_endpoint")
