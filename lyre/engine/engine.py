"""The engine: generation for one model and tokenizer. Every place that generates text
(`lyre sample`, chat, the server, lyre.generate.simple) goes through it.

    engine = Engine(model, tokenizer)
    engine.generate(prompts, SamplingConfig(...))   # batched; Completion per sample
    engine.stream(prompt, params)                   # text pieces of one continuation
    engine.new_batch(capacity)                      # the step-level API (lyre/engine/batch.py)

`Engine(model)` leaves the caller's model as it is: its classes, weights and train/eval flags.
It runs the model under torch.inference_mode with dropout off only while generating (batch.py's
`eval_mode`). Faster CPU weights (oneDNN packing, fp16 copies, int8) are applied once at load
time by lyre.generate.speed.prepare_for_inference, which load_run and the CLI call, never here.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence as Seq

import torch
import torch.nn as nn

from lyre.constrain import check_constraint
from lyre.core.errors import LyreError
from lyre.engine.batch import Batch, eval_mode
from lyre.engine.rows import Completion, Row
from lyre.engine.sampling import SamplingConfig, check_int
from lyre.engine.text import TextStream
from lyre.model.contract import capabilities

UNBOUNDED = 1 << 30  # the context length of a model without one


class Engine:
    """Generation for one model and tokenizer: `generate` (batched), `stream`, `new_batch`.

    `device` (default: where the model's weights are) must be where the model already is: the
    engine does not move the caller's model (`model.to(device)` first).
    """

    def __init__(
        self, model: nn.Module, tokenizer=None, device: torch.device | str | None = None
    ) -> None:
        param = next(model.parameters())
        self.device = _check_device(param.device, device)
        self.model = model
        self.dtype = param.dtype
        self.tokenizer = tokenizer
        able = capabilities(model)
        if not able.decoder_only:
            raise LyreError(f"model.arch={model.config.arch} is an encoder-decoder: it translates a "
                            "source (lyre translate, lyre.zoo.translate) rather than continuing a prompt")
        # A model whose generation state does not grow with the text (a recurrent one) has no
        # context limit here: its rows never slide, only max_new_tokens or a stop ends them.
        self.block_size: int = UNBOUNDED if able.unbounded_context else model.config.block_size
        self.vocab_size: int = model.config.vocab_size

    # ---- the API -------------------------------------------------------------------------

    def generate(
        self,
        prompts: str | Seq[int] | Seq[str | Seq[int]],
        params: SamplingConfig | Seq[SamplingConfig] | None = None,
        *,
        max_batch: int = 64,
    ) -> list[Completion]:
        """Complete every prompt (text or token ids), batched.

        `params` is one config for all prompts or one per prompt. Returns num_samples
        completions per prompt, prompt by prompt. At most `max_batch` rows decode together (it
        bounds the KV cache); waiting prompts join as rows finish (continuous batching).
        """
        prompts = self._prompt_list(prompts)
        if isinstance(params, SamplingConfig) or params is None:
            params = [params or SamplingConfig()] * len(prompts)
        if len(params) != len(prompts):
            raise LyreError(f"params: {len(params)} configs for {len(prompts)} prompts")
        for p in params:
            self.check_params(p)
        check_int("max_batch", max_batch, 1, None)
        ids = [self.encode(p) for p in prompts]
        rows_needed = sum(p.num_samples for p in params)
        capacity = min(rows_needed, max(max_batch, max(p.num_samples for p in params)))
        need = max(min(len(i), self.block_size) + p.max_new_tokens for i, p in zip(ids, params, strict=True))
        batch = self.new_batch(capacity, max_length=need)
        rows: list[Row] = []
        i = 0
        while i < len(ids) or batch:
            # Admit every waiting prompt that fits in one add, so they share prefills.
            j, free = i, batch.free
            while j < len(ids) and params[j].num_samples <= free:
                free -= params[j].num_samples
                j += 1
            if j > i:
                rows += batch.add(ids[i:j], params[i:j])
                i = j
            else:
                batch.step()
        return [row.completion() for row in rows]

    def stream(self, prompt: str | Seq[int], params: SamplingConfig | None = None) -> Stream:
        """Text pieces of one continuation as they are generated; see Stream."""
        params = self.check_params(params or SamplingConfig())
        if params.num_samples != 1:
            raise LyreError(f"num_samples must be 1 to stream; got {params.num_samples}")
        ids = self.encode(prompt)
        batch = self.new_batch(1, max_length=min(len(ids), self.block_size) + params.max_new_tokens)
        (row,) = batch.add([ids], params)
        return Stream(batch, row)

    def new_batch(self, capacity: int, max_length: int | None = None) -> Batch:
        """An empty batch for a scheduler to drive (continuous batching)."""
        return Batch(self, capacity, max_length)

    # ---- checks and building blocks ------------------------------------------------------

    def encode(self, prompt: str | Seq[int]) -> list[int]:
        """Prompt text or ids -> ids; an empty prompt starts from <|endoftext|> when there is one."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise LyreError("prompt is text but the engine has no tokenizer; pass token ids")
            ids = self.tokenizer.encode(prompt) if prompt else []
        else:
            ids = self.check_ids(prompt, allow_empty=True)
        if not ids:
            bos = self.tokenizer.eot_id if self.tokenizer is not None else None
            if bos is None:
                raise LyreError(
                    "prompt is empty and this tokenizer has no <|endoftext|> token to start "
                    "from; give a prompt of at least one token"
                )
            ids = [bos]
        return ids

    def check_ids(self, ids: Seq[int], allow_empty: bool = False) -> list[int]:
        """Token ids as a list of ints in the model's vocabulary (tensors and arrays welcome)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, str | bytes) or not isinstance(ids, Seq):
            raise LyreError(f"prompt must be text or a list of token ids; got {type(ids).__name__}")
        ids = list(ids)
        if not ids and not allow_empty:
            raise LyreError("prompt is empty; give at least one token")
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size:
                raise LyreError(f"prompt token {i!r} is not a token id in 0..{self.vocab_size - 1}")
        return ids

    def check_params(self, params: SamplingConfig) -> SamplingConfig:
        if not isinstance(params, SamplingConfig):
            raise LyreError(f"params must be a SamplingConfig; got {type(params).__name__}")
        params.validate()
        for i in params.stop_token_ids or ():
            if i >= self.vocab_size:
                raise LyreError(f"stop_token_ids: {i} is not a token id in 0..{self.vocab_size - 1}")
        if params.stop and self.tokenizer is None:
            raise LyreError("stop strings need a tokenizer to decode text; pass one to the Engine")
        if params.constraint is not None:
            if self.tokenizer is None:
                raise LyreError("a constraint needs the tokenizer (token bytes); pass one to the Engine")
            check_constraint(params.constraint, self.tokenizer)  # compiled once, then cached
        return params

    def new_row(self, prompt: list[int], params: SamplingConfig, sample: int = 0, tag=None) -> Row:
        if params.stop_token_ids is not None:
            stop_ids = frozenset(params.stop_token_ids)
        else:
            eot = self.tokenizer.eot_id if self.tokenizer is not None else None
            stop_ids = frozenset() if eot is None else frozenset([eot])
        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed + sample)
        else:
            generator.seed()
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
            seen[torch.tensor(prompt, device=self.device)] = True
        token_bytes = self.tokenizer.token_bytes if self.tokenizer is not None else None
        matcher = None
        if params.constraint is not None:
            from lyre.constrain.compile import compile_constraint  # llguidance: only where used
            from lyre.constrain.matcher import RowMatcher

            matcher = RowMatcher(compile_constraint(params.constraint, self.tokenizer))
        text = TextStream(token_bytes, params.stop)
        return Row(prompt, params, stop_ids, text, generator, seen, tag, matcher)

    def _prompt_list(self, prompts) -> list[str | Seq[int]]:
        if isinstance(prompts, str):
            return [prompts]
        if not isinstance(prompts, Seq) or not prompts:
            raise LyreError("prompts must be a non-empty list of texts or token id lists")
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompts):
            return [prompts]  # one prompt given as token ids
        return list(prompts)


class Stream:
    """Iterate for text pieces; joined they equal `completion.text`, set once the row ends."""

    def __init__(self, batch: Batch, row: Row) -> None:
        self.batch, self.row = batch, row
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            piece = self.row.take_text()
            if piece:
                return piece
            if self.row.finished:
                self.completion = self.row.completion()
                raise StopIteration
            self.batch.step()


def _check_device(where: torch.device, asked: torch.device | str | None) -> torch.device:
    """The model's device; a LyreError when the caller asked for another one."""
    if asked is None:
        return where
    asked = torch.device(asked)
    same = asked.type == where.type and (asked.index is None or asked.index == where.index)
    if not same:
        raise LyreError(
            f"the model is on {where} but the engine was asked for {asked}; move the model first "
            f"(model.to({str(asked)!r})) or leave device out"
        )
    return where


# ----------------------------------------------------------------------------------------------
# The reference


@torch.inference_mode()
def generate_without_cache(model: nn.Module, prompts: Seq[Seq[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy tokens by recomputing the last block_size tokens at every step (nanoGPT's loop).

    No cache, no masks: the engine is tested against it, and the benchmark times it as the
    "no cache" baseline. Prompts of equal length run as one batch.
    """
    block = model.config.block_size
    idx = torch.tensor([list(p) for p in prompts], device=next(model.parameters()).device)
    start = idx.size(1)
    with eval_mode(model):
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, -block:])
            idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx[:, start:].tolist()
