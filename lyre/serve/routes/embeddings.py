"""POST /v1/embeddings (OpenAI's shape) and POST /v1/tokenize (vLLM's shape).

Embeddings: the run's final hidden states (after the last norm), averaged over the text's tokens
and scaled to unit length, the same vectors as lyre.rag's `run:DIR` embedder, so an index built
with one can be searched with the other. The hidden states come from `model.hidden(idx)` when
the model has it, else from the forward pass without the LM head (lyre.rag.embedders.
final_hidden). A text longer than the context is cut to its first block_size tokens (as the
run: embedder does); a character a char-level model never saw becomes a space. With
`encoding_format: "base64"` (what the openai client asks for by default) each vector is the
base64 of little-endian float32s. A language model's states are a weak retriever unless the
model was trained for it: measure before relying on them.

Tokenize: how many tokens a prompt (or chat messages, laid out by the run's template) takes,
so a client (lyre rag's OpenAILLM) can fit prompts to the context exactly; for a char-level
model also which characters it lacks (`unknown`), which the client replaces before sending.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from lyre.core.errors import LyreError
from lyre.serve import schemas as S
from lyre.serve.errors import APIError
from lyre.serve.state import ServeState

router = APIRouter(tags=["openai"])
MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
BATCH = 16  # texts run through the model together
_model_lock = threading.Lock()  # one embedding batch at a time (the scheduler runs alongside)

Text = Annotated[str, Field(max_length=1_000_000)]
Ids = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="The model id, as listed by GET /v1/models.")
    input: (Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]
            | Ids | Annotated[list[Ids], Field(min_length=1, max_length=MAX_INPUTS)]) = Field(
        description="A text, a list of texts, token ids or a list of token id lists.")
    encoding_format: Literal["float", "base64"] | None = Field(None, description="Default float.")
    dimensions: int | None = Field(None, ge=1, description="Only the model's own width is supported.")
    user: str | None = Field(None, max_length=256, description="Accepted and ignored.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: Text | None = None
    messages: list[S.ChatMessage] | None = Field(None, max_length=1024)
    add_generation_prompt: bool = Field(True, description="lyre's templates always add it.")
    add_special_tokens: bool = Field(True, description="Accepted and ignored.")


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    unknown: list[str] = Field(default_factory=list, description=(
        "Characters a character-level model lacks (counted as one token each); the generation "
        "routes refuse them, so replace them before sending."))


@router.post("/v1/embeddings", response_model=EmbeddingList,
             responses=S.error_responses(400, 401, 404, 413))
async def embeddings(req: EmbeddingRequest, request: Request):
    serve = ServeState.of(request)
    serve.check_model(req.model)
    width = serve.scheduler.engine.model.config.n_embd
    if req.dimensions is not None and req.dimensions != width:
        raise APIError(400, f"dimensions: this model's embeddings have {width}; other sizes are "
                       "not supported", param="dimensions", code="unsupported_parameter")
    inputs = req.input if isinstance(req.input, list) and req.input and \
        not isinstance(req.input[0], int) else [req.input]
    ids = [_ids_of(serve, x) for x in inputs]
    vectors = await asyncio.to_thread(_embed_locked, serve.scheduler.engine, ids)
    data = [Embedding(index=i, embedding=_encode(v, req.encoding_format)) for i, v in enumerate(vectors)]
    tokens = sum(len(x) for x in ids)
    return EmbeddingList(data=data, model=serve.model_name,
                         usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))


@router.post("/v1/tokenize", response_model=TokenizeResponse, tags=["lyre"],
             responses=S.error_responses(400, 401, 404, 413))
async def tokenize(req: TokenizeRequest, request: Request):
    serve = ServeState.of(request)
    if req.model is not None:
        serve.check_model(req.model)
    if (req.prompt is None) == (req.messages is None):
        raise APIError(400, "give either prompt or messages", param="prompt")
    if req.messages is not None:
        try:
            text = serve.template.render([{"role": m.role, "content": m.text()} for m in req.messages])
        except LyreError as e:
            raise APIError(400, str(e), param="messages") from None
    else:
        text = req.prompt
    unknown: list[str] = []
    known = getattr(serve.tokenizer, "_stoi", None)
    if serve.tokenizer.kind == "char" and known is not None and text:
        # Count what the text would be with them replaced one for one, and say which they are.
        unknown = sorted(set(text) - known.keys())
        if unknown:
            fill = next(iter(known))
            text = text.translate(str.maketrans({c: fill for c in unknown}))
    ids = await asyncio.to_thread(serve.encode_text, text, "prompt") if text else []
    return TokenizeResponse(count=len(ids), max_model_len=serve.block_size, tokens=ids,
                            unknown=unknown)


def _ids_of(serve: ServeState, item) -> list[int]:
    block = serve.block_size
    if isinstance(item, list):
        vocab = serve.tokenizer.vocab_size
        bad = next((i for i in item if i >= vocab), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the vocabulary (0..{vocab - 1})",
                           param="input", code="invalid_token_id")
        return item[:block]
    tok = serve.tokenizer
    if tok.kind == "char":  # as the run: embedder: unseen characters become its unk or a space
        known = getattr(tok, "_stoi", {})
        fill = getattr(tok, "unk", None) or (" " if " " in known else "")
        item = "".join(c if c in known else fill for c in item)
    ids = tok.encode(item)[:block]
    return ids or [tok.eot_id if tok.eot_id is not None else 0]


def pooled_embeddings(model, device, id_lists: list[list[int]]) -> np.ndarray:
    """Mean of the final hidden states over each id list's tokens, L2-normalised: [n, n_embd]
    (the same function as the `run:` embedder of lyre rag)."""
    from lyre.rag.embedders import mean_pooled

    return mean_pooled(model, device, id_lists, BATCH)


def _embed_locked(engine, id_lists: list[list[int]]) -> np.ndarray:
    with _model_lock:
        return pooled_embeddings(engine.model, engine.device, id_lists)


def _encode(vector: np.ndarray, encoding_format: str | None) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]
