"""What the routes need about the served run: ServeState (a language model: completions, chat,
embeddings) or ClassifierState (a classifier: /v1/classify), and the checks they share.

create_app builds one and stores it as `app.state.serve`; a route reaches it with
`ServeState.of(request)` or `ClassifierState.of(request)`, and the routes both kinds of app
share (/v1/models, /health, /metrics; lyre.serve.routes.models) with `served(request)`.
Both kinds have the same small surface for them and for the server (the `Served` protocol):
a model card, the model-name check, a health report, metrics, start/stop and draining.
Nothing here runs a language model; ClassifierState.classify runs the classifier (in a thread).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fastapi import Request

from lyre.chat.templates import ChatTemplate
from lyre.classify.predict import Classifier, Prediction
from lyre.constrain import Constraint
from lyre.core.errors import LyreError
from lyre.engine import SamplingConfig, sampling
from lyre.serve import schemas as S
from lyre.serve.errors import APIError
from lyre.serve.metrics import ServeMetrics
from lyre.serve.scheduler import Scheduler
from lyre.serve.settings import ServeSettings
from lyre.tokenizers import Tokenizer

GREEDY_BELOW = 1e-5  # temperatures below this sample greedily (as vLLM)


class Served(Protocol):
    """What the shared routes and the server (drain on SIGTERM) need of either kind of app."""

    settings: ServeSettings
    model_name: str
    metrics: ServeMetrics

    def model_card(self) -> S.Model: ...
    def check_model(self, name: str) -> None: ...
    def health(self) -> S.Health | S.ClassifierHealth: ...
    def start(self) -> None: ...
    def stop(self, timeout: float) -> None: ...
    def begin_drain(self) -> None: ...


def served(request: Request) -> Served:
    return request.app.state.serve


def check_model(name: str, served_name: str) -> None:
    """A request that names a model must name the served one (404 otherwise, as OpenAI)."""
    if name != served_name:
        raise APIError(404, f"the model {name!r} does not exist; this server serves "
                       f"{served_name!r}", param="model", code="model_not_found")


@dataclass
class ServeState:
    settings: ServeSettings
    scheduler: Scheduler
    tokenizer: Tokenizer
    template: ChatTemplate
    model_name: str
    block_size: int
    created: int
    metrics: ServeMetrics
    tool_names: list[str] = field(default_factory=list)  # `--tools`: the page's agent

    @staticmethod
    def of(request: Request) -> ServeState:
        return request.app.state.serve

    def model_card(self) -> S.Model:
        return S.Model(id=self.model_name, created=self.created, context_length=self.block_size,
                       chat_template=self.template.name, rag=bool(self.settings.rag_index),
                       tools=self.tool_names or None, capabilities=S.Capabilities())

    # ---- checks that both generation routes make ---------------------------------------------

    def check_model(self, name: str) -> None:
        check_model(name, self.model_name)

    # ---- lifetime: the scheduler's thread ----------------------------------------------------

    def start(self) -> None:
        self.scheduler.start()

    def stop(self, timeout: float) -> None:
        self.scheduler.stop(timeout)

    def begin_drain(self) -> None:
        self.scheduler.begin_drain()

    def health(self) -> S.Health:
        st = self.scheduler.stats()
        return S.Health(status="draining" if self.scheduler.draining else "ok", model=self.model_name,
                        active=st["active"], queued=st["queued"], max_batch=st["max_batch"],
                        max_queue=st["max_queue"], steps=st["steps"],
                        generated_tokens=st["generated_tokens"])

    def check_common(self, req: S._SamplingFields) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(req, name):
                raise APIError(400, f"{name} is not supported; use repetition_penalty (lyre extra)",
                               param=name, code="unsupported_parameter")

    def check_prompt(self, ids: list[int], param: str) -> None:
        if not ids:
            raise APIError(400, "the prompt is empty", param=param, code="empty_prompt")
        if len(ids) >= self.block_size:
            raise APIError(
                400,
                f"this model's context is {self.block_size} tokens; the prompt has {len(ids)} "
                "tokens and leaves no room for an answer: shorten it",
                param=param, code="context_length_exceeded",
            )
        vocab = self.tokenizer.vocab_size
        bad = next((i for i in ids if not 0 <= i < vocab), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the vocabulary (0..{vocab - 1})",
                           param=param, code="invalid_token_id")

    # ---- turning a request into engine parameters --------------------------------------------

    def max_new_tokens(self, requested: int | None, prompt_len: int) -> int:
        if self.settings.overflow == "slide":  # the window slides: any length up to the limit
            return requested or self.block_size - prompt_len
        room = self.block_size - prompt_len  # OpenAI's rule: the context holds prompt and answer
        return room if requested is None else min(requested, room)

    def sampling(self, req: S._SamplingFields, max_new_tokens: int, stop: list[str],
                 logprobs: bool, top_logprobs: int = 0,
                 constraint: Constraint | None = None) -> SamplingConfig:
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
            top_logprobs=top_logprobs if logprobs else 0,
            overflow=self.settings.overflow,
            constraint=constraint,
        )
        try:
            return self.scheduler.engine.check_params(params)
        except LyreError as e:
            raise APIError(400, str(e), code="invalid_value") from None

    @staticmethod
    def stops(req: S._SamplingFields) -> list[str]:
        if req.stop is None:
            return []
        return [req.stop] if isinstance(req.stop, str) else list(req.stop)

    # ---- tokens -----------------------------------------------------------------------------

    def encode_prompts(self, prompt) -> list[list[int]]:
        """The token ids of a completions `prompt` (text, texts, ids or lists of ids)."""
        if isinstance(prompt, str):
            return [self.encode_text(prompt)]
        if prompt and isinstance(prompt[0], int):
            return [list(prompt)]
        return [self.encode_text(p) if isinstance(p, str) else list(p) for p in prompt]

    def encode_text(self, text: str, param: str = "prompt") -> list[int]:
        if not text:  # an empty prompt starts from <|endoftext|> when the model has it
            eot = self.tokenizer.eot_id
            return [eot] if eot is not None else []
        try:
            return self.tokenizer.encode(text)
        except LyreError as e:  # e.g. a character a char-level model never saw
            raise APIError(400, str(e), param=param, code="invalid_prompt") from None

    # ---- metrics ----------------------------------------------------------------------------

    def first_token_timer(self, request: Request, route: str) -> Callable[[], None]:
        """A callback that records the request's time to first token (from its arrival)."""
        start = request.scope.get("lyre.start", time.perf_counter())
        return lambda: self.metrics.ttft.labels(route).observe(time.perf_counter() - start)


@dataclass
class ClassifierState:
    """A classifier run (lyre.classify.predict.Classifier, the loader `lyre classify` uses too).

    The model runs in a worker thread, one batch at a time behind a lock, so the event loop
    stays free; there is no queue to drain, only new requests to refuse once shutdown begins.
    """

    settings: ServeSettings
    classifier: Classifier
    model_name: str
    metrics: ServeMetrics
    created: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def of(request: Request) -> ClassifierState:
        return request.app.state.serve

    def model_card(self) -> S.Model:
        return S.Model(id=self.model_name, created=self.created,
                       context_length=self.classifier.limit, chat_template="none")

    def check_model(self, name: str) -> None:
        check_model(name, self.model_name)

    def health(self) -> S.ClassifierHealth:
        return S.ClassifierHealth(status="draining" if self.draining else "ok", model=self.model_name,
                                  labels=self.classifier.labels)

    def start(self) -> None:
        pass  # nothing runs between requests

    def stop(self, timeout: float) -> None:
        self.begin_drain()

    def begin_drain(self) -> None:
        self.draining = True

    async def classify(self, texts: list[str]) -> list[Prediction]:
        """The classifier's predictions, computed in a worker thread; 503 once draining."""
        if self.draining:
            raise APIError(503, "the server is shutting down", code="server_unavailable",
                           headers={"Retry-After": "5"})
        try:
            predictions = await asyncio.to_thread(self._run, texts)
        except LyreError as e:
            raise APIError(400, str(e), param="input") from None
        self.metrics.prompt_tokens.inc(sum(p.tokens for p in predictions))
        return predictions

    def _run(self, texts: list[str]) -> list[Prediction]:
        with self.lock:
            return self.classifier.classify(texts)
