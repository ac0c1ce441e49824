"""What a model configuration costs: parameters, memory and FLOPs, computed from the shape alone.

Nothing is allocated, so `lyre info` works for GPT-3 175B on a laptop. The parameter count is
checked against real models in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from lyre.model.gpt import GPTConfig

GB = 1e9


@dataclass
class ModelCost:
    total_params: int
    embedding_params: int  # token (+ learned position) tables
    non_embedding_params: int
    flops_per_token: float  # training (forward + backward) FLOPs per token at full context
    weights_fp32_bytes: int
    weights_bf16_bytes: int
    adamw_train_bytes: int  # fp32 weights + grads + two Adam moments (activations not included)


def count_parameters(c) -> tuple[int, int]:
    """(total, embedding) parameter counts of a config, tied weights counted once.

    GPTs are counted from the formula (tested against real models); any other family is built
    on the meta device, which allocates nothing, and counted.
    """
    if c.arch != "gpt":
        return _count_by_building(c)
    d, h, bias = c.n_embd, c.mlp_hidden, int(c.bias)
    norm = d * (1 + bias) if c.norm == "layernorm" else d
    attention = d * 3 * d + 3 * d * bias + d * d + d * bias
    mlp = d * h + h * bias + h * d + d * bias
    per_layer = attention + mlp + 2 * norm
    embedding = c.vocab_size * d + (c.block_size * d if c.pos == "learned" else 0)
    head = 0 if c.tie_embeddings else c.vocab_size * d
    return embedding + c.n_layer * per_layer + norm + head, embedding


def flops_per_token(c: GPTConfig, non_embedding_params: int) -> float:
    """Training FLOPs per token as in PaLM (appendix B) and nanoGPT's MFU: 6 N + 12 L T d.

    N counts every weight used in a matmul: the blocks and the LM head (a matmul even when tied
    to the embedding); 12 L T d is attention's QK^T and AV at full context T, forward + backward.
    """
    if c.arch != "gpt":  # every weight in one multiply-add per token, forward and backward
        return 6.0 * max(non_embedding_params, 1) + 6.0 * c.vocab_size
    head = c.vocab_size * c.n_embd
    return 6.0 * (non_embedding_params + head) + 12.0 * c.n_layer * c.block_size * c.n_embd


def _count_by_building(c) -> tuple[int, int]:
    import torch

    from lyre.model import build_model

    with torch.device("meta"):
        model = build_model(c)
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return total, embedding


def model_cost(c) -> ModelCost:
    total, embedding = count_parameters(c)
    return ModelCost(
        total_params=total,
        embedding_params=embedding,
        non_embedding_params=total - embedding,
        flops_per_token=flops_per_token(c, total - embedding),
        weights_fp32_bytes=4 * total,
        weights_bf16_bytes=2 * total,
        adamw_train_bytes=16 * total,
    )


def vocab_size_of(tokenizer_spec: str, corpus: list[str]) -> int | None:
    """The vocabulary a tokenizer spec will give, without training it (None if unknown).

    Training sets model.vocab_size from the tokenizer, so a preset's own vocab_size is only a
    placeholder; `lyre info` uses this to show the real size.
    """
    kind, _, arg = tokenizer_spec.partition(":")
    if kind == "gpt2":
        return 50257
    size = arg.partition(":")[0]  # bpe:V or bpe:V:digits
    if kind == "bpe" and size.isdigit():
        return int(size)
    if kind == "char":
        chars: set[str] = set()
        for path in corpus:
            try:
                with open(path, encoding="utf-8") as f:
                    while chunk := f.read(1 << 20):
                        chars.update(chunk)
            except (OSError, UnicodeDecodeError):
                return None
        return len(chars) or None
    return None


def format_cost(c) -> str:
    cost = model_cost(c)
    if c.arch != "gpt":
        shape = ", ".join(f"{k}={v}" for k, v in vars(c).items())
    else:
        shape = (f"{c.n_layer} layers x {c.n_embd} dims x {c.n_head} heads, context {c.block_size}, "
                 f"vocab {c.vocab_size}, pos={c.pos}, norm={c.norm}, act={c.act}, "
                 f"tied={c.tie_embeddings}, bias={c.bias}")
    rows = [
        ("shape", shape),
        ("parameters", f"{cost.total_params:,} ({_human(cost.total_params)})"),
        ("  embedding", f"{cost.embedding_params:,}"),
        ("  non-embedding", f"{cost.non_embedding_params:,}"),
        ("weights fp32", _bytes(cost.weights_fp32_bytes)),
        ("weights bf16", _bytes(cost.weights_bf16_bytes)),
        ("training with AdamW", f"{_bytes(cost.adamw_train_bytes)} (weights, grads, 2 moments; + activations)"),
        ("FLOPs per token", f"{cost.flops_per_token:.3e} (training: forward + backward)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def _bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"
