"""ServeState: what every route needs about the served run, and the checks they share.

create_app builds one and stores it as `app.state.serve`; a route reaches it with
`ServeState.of(request)`. Nothing here runs the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from lyre.chat import ChatTemplate
from lyre.engine import SamplingConfig, sampling
from lyre.errors import LyreError
from lyre.serve import schemas as S
from lyre.serve.errors import APIError
from lyre.serve.metrics import ServeMetrics
from lyre.serve.scheduler import Scheduler
from lyre.serve.settings import ServeSettings
from lyre.tokenizers import Tokenizer

GREEDY_BELOW = 1e-5  # temperatures below this sample greedily (as vLLM)


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

    @staticmethod
    def of(request: Request) -> ServeState:
        return request.app.state.serve

    def model_card(self) -> S.Model:
        return S.Model(id=self.model_name, created=self.created, context_length=self.block_size,
                       chat_template=self.template.name, rag=bool(self.settings.rag_index))

    # ---- checks that both generation routes make ---------------------------------------------

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves "
                           f"{self.model_name!r}", param="model", code="model_not_found")

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
                 logprobs: bool, top_logprobs: int = 0) -> SamplingConfig:
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
