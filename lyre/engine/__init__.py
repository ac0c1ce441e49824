"""The generation engine: KV-cached, batched, streaming generation for every lyre front end.

Read in this order, one concept per module:

    sampling.py  SamplingConfig (the one place the sampling defaults live), logits -> token
    text.py      TextStream: token bytes -> text pieces, UTF-8 safe, stop strings held back
    rows.py      Row (one continuation as it is generated), Completion (what it becomes)
    cache.py     the cache views a forward pass sees: ragged rows, positions, masks
    batch.py     Batch: rows decoding together, prefills shared, continuous batching
    engine.py    Engine (generate, stream, new_batch), Stream, and the no-cache reference

The CPU speed paths (oneDNN packing, fp16 copies, int8) live apart in lyre/generate/speed.py.
Constrained decoding (SamplingConfig.constraint: JSON schema, regex, choice, grammar) lives in
lyre/constrain/; the engine only masks a row's logits with it (sampling.py: mask_constrained)
and advances it by each token (rows.py: Row.accept).
"""

from lyre.engine.batch import Batch, eval_mode, prefill_groups
from lyre.engine.engine import Engine, Stream, generate_without_cache
from lyre.engine.rows import Completion, Row
from lyre.engine.sampling import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    MAX_NEW_TOKENS,
    MAX_SAMPLES,
    OVERFLOW_POLICIES,
    SamplingConfig,
    apply_repetition_penalty,
    sample_rows,
    token_logprobs,
    warp_logits,
)
from lyre.engine.text import TextStream

__all__ = [
    "Batch", "Completion", "DEFAULT_MAX_NEW_TOKENS", "DEFAULT_REPETITION_PENALTY",
    "DEFAULT_TEMPERATURE", "DEFAULT_TOP_K", "DEFAULT_TOP_P", "Engine", "MAX_NEW_TOKENS",
    "MAX_SAMPLES", "OVERFLOW_POLICIES", "Row", "SamplingConfig", "Stream", "TextStream",
    "apply_repetition_penalty", "eval_mode", "generate_without_cache", "prefill_groups",
    "sample_rows", "token_logprobs", "warp_logits",
]
