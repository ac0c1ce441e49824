"""See inside: draw the attention of a run on a prompt, one heatmap per (layer, head).

Row i of a heatmap is query token i, column j key token j, and the colour the probability that i
gives to j (each row sums to 1). In a GPT the upper triangle is empty (the causal mask: no token
looks ahead); a head that attends to "the previous token" draws a sub-diagonal, one that finds
the start of words or repeats of the current character draws its own pattern.

For the encoder-decoder (arch seq2seq) the prompt is the source: the run translates it (greedy)
and draws, by `kind`, the cross-attention (target tokens looking at source tokens: for the dates
task, the day, month and year digits of the output lining up with where the format put them),
the encoder's self-attention or the decoder's masked self-attention. A GPT has only the last
kind (causal self-attention): asking it for cross or encoder attention is an error.

    lyre attention RUN --prompt "Sing, O goddess" --out attn.png
    lyre attention runs/seq2seq-dates --prompt "3 May 1999" --out cross.png [--kind encoder]

Why the GPT is run differently here: its fused attention kernel (scaled_dot_product_attention)
never materialises the probabilities. We switch each layer to the reference attention (the same
math written out, lyre.model.gpt.reference_attention) and record softmax(QK^T/sqrt(d)) as it is
computed; the output is unchanged (a test in tests/test_model.py holds both equal).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from lyre.core.errors import LyreError
from lyre.core.io import atomic_write_bytes

KINDS = ("cross", "encoder", "decoder")
MAX_TOKENS = 64  # beyond this the labels are unreadable: the last MAX_TOKENS tokens are drawn
DPI = 100
CELL_INCHES = 2.4  # each heatmap's square, labels included, at up to 16 tokens...
TOKEN_INCHES = 0.15  # ...and this much more per token beyond 16
HEADER_INCHES = 0.6  # the figure's title


@dataclass
class AttentionMaps:
    weights: torch.Tensor  # [layers, heads, queries, keys]
    queries: list[str]  # token labels along the rows
    keys: list[str]  # token labels along the columns
    title: str


def grid_inches(layers: int, heads: int, n_tokens: int) -> tuple[float, float]:
    """(width, height) of the figure in inches: a square cell per (layer, head)."""
    cell = CELL_INCHES + TOKEN_INCHES * max(0, n_tokens - 16)
    return heads * cell, layers * cell + HEADER_INCHES


def grid_pixels(layers: int, heads: int, n_tokens: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG that draw_maps writes for this grid."""
    width, height = grid_inches(layers, heads, n_tokens)
    return round(width * DPI), round(height * DPI)


def token_label(tokenizer, token: int) -> str:
    """A readable tick label: whitespace made visible, specials named."""
    text = tokenizer.decode([token])
    return text.replace(" ", "\u2423").replace("\n", "\u23ce").replace("\t", "\u21e5") or "\u2205"


# ----------------------------------------------------------------------------------------------
# Computing the maps


@torch.no_grad()
def gpt_maps(model, tokenizer, prompt: str) -> AttentionMaps:
    """Self-attention of a GPT over the prompt's tokens (the last MAX_TOKENS of them)."""
    ids = tokenizer.encode(prompt)[-min(MAX_TOKENS, model.config.block_size):]
    if not ids:
        raise LyreError("the prompt is empty: give some text to look at (--prompt TEXT)")
    device = next(model.parameters()).device
    with _recording_gpt_attention(model) as recorded:
        model(torch.tensor([ids], device=device))
    weights = torch.stack([w[0] for w in recorded]).float().cpu()  # [layers, heads, T, T]
    labels = [token_label(tokenizer, i) for i in ids]
    return AttentionMaps(weights, labels, labels, "self-attention (rows: queries, columns: keys)")


@contextmanager
def _recording_gpt_attention(model) -> Iterator[list[torch.Tensor]]:
    """Every layer runs the reference attention, whose probabilities are appended to the list
    (one [B, H, T, S] tensor per layer, in order)."""
    import lyre.model.gpt as gpt

    recorded: list[torch.Tensor] = []
    original = gpt.reference_attention

    def recording(q, k, v, mask=None):
        T, S = q.size(-2), k.size(-2)
        scores = (q @ k.transpose(-2, -1)) / q.size(-1) ** 0.5
        if mask is None:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        recorded.append(probs)
        return probs @ v

    layers = [m for m in model.modules() if hasattr(m, "impl") and hasattr(m, "c_attn")]
    impls = [m.impl for m in layers]
    gpt.reference_attention = recording
    for m in layers:
        m.impl = "reference"
    try:
        yield recorded
    finally:
        gpt.reference_attention = original
        for m, impl in zip(layers, impls, strict=True):
            m.impl = impl


@torch.no_grad()
def seq2seq_maps(model, tokenizer, prompt: str, kind: str = "cross") -> AttentionMaps:
    """Attention of an encoder-decoder translating `prompt` (greedy), by kind."""
    from lyre.data.pairs import encode_source
    from lyre.zoo.translate import greedy_decode

    if kind not in KINDS:
        raise LyreError(f"--kind must be one of {', '.join(KINDS)}; got {kind!r}")
    c = model.config
    src = encode_source(tokenizer, prompt, c.eos_id, c.block_size, "the prompt")
    out = greedy_decode(model, [src])[0]
    tgt = [c.bos_id] + out
    device = next(model.parameters()).device
    maps = model.attention_maps(torch.tensor([src], device=device), torch.tensor([tgt], device=device))
    weights = maps[kind][:, 0].float().cpu()  # [layers, heads, queries, keys]

    def labels(ids: list[int]) -> list[str]:
        named = {c.bos_id: "<bos>", c.eos_id: "<eos>", c.pad_id: "<pad>"}
        return [named.get(i) or token_label(tokenizer, i) for i in ids]

    translation = tokenizer.decode(out)
    rows, cols = {"cross": (tgt, src), "encoder": (src, src), "decoder": (tgt, tgt)}[kind]
    title = f"{kind} attention: {prompt!r} -> {translation!r}"
    return AttentionMaps(weights, labels(rows), labels(cols), title)


def attention_maps(model, tokenizer, prompt: str, kind: str | None = None) -> AttentionMaps:
    """The maps of any model that has attention: a GPT (its self-attention; `kind` None or
    "decoder", which is what a GPT's causal self-attention is), or an encoder-decoder (`kind`,
    default "cross")."""
    from lyre.model.gpt import GPT

    if kind is not None and kind not in KINDS:
        raise LyreError(f"--kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if hasattr(model, "attention_maps"):
        return seq2seq_maps(model, tokenizer, prompt, kind or "cross")
    if isinstance(model, GPT):
        if kind not in (None, "decoder"):
            raise LyreError(f"a GPT has (causal) self-attention only; --kind {kind} needs an "
                            "encoder-decoder run (arch seq2seq): leave --kind out for a GPT")
        return gpt_maps(model, tokenizer, prompt)
    arch = getattr(model.config, "arch", type(model).__name__)
    raise LyreError(f"model.arch={arch} has no attention to draw; lyre attention draws gpt and "
                    "seq2seq runs")


# ----------------------------------------------------------------------------------------------
# Drawing


def draw_maps(maps: AttentionMaps, out: str | Path) -> Path:
    """One heatmap per (layer, head) in a grid, rows = layers; written atomically to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg", "pdf"):
        raise LyreError(f"cannot draw {out}: use a file name ending in .png, .svg or .pdf")
    layers, heads = maps.weights.shape[:2]
    n_tokens = max(len(maps.queries), len(maps.keys))
    fig, axes = plt.subplots(layers, heads, figsize=grid_inches(layers, heads, n_tokens), dpi=DPI,
                             squeeze=False)
    cell = grid_inches(1, 1, n_tokens)[0]
    font = max(4.0, min(9.0, 0.6 * 72 * cell / n_tokens))  # points: a label per token's width
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            ax.imshow(maps.weights[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0,
                      aspect="auto", interpolation="nearest")
            ax.set_title(f"layer {layer} head {head}", fontsize=9)
            ax.set_xticks(range(len(maps.keys)), maps.keys, fontsize=font, rotation=90)
            ax.set_yticks(range(len(maps.queries)), maps.queries, fontsize=font)
            ax.tick_params(length=0, pad=1)
    fig.suptitle(maps.title, fontsize=12)
    # The layout lives inside the fixed figure size, so the image size is exactly grid_pixels.
    fig.tight_layout(rect=(0, 0, 1, 1 - HEADER_INCHES / fig.get_figheight()))
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=DPI)
    plt.close(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def draw_run(run_dir: str | Path, prompt: str, out: str | Path, *, kind: str | None = None,
             checkpoint: str = "best", device: str = "auto") -> Path:
    """`lyre attention`: load RUN_DIR and draw its attention on `prompt` into `out` (`kind` as
    in attention_maps)."""
    from lyre.generate.runs import load_run

    if kind is not None and kind not in KINDS:
        raise LyreError(f"--kind must be one of {', '.join(KINDS)}; got {kind!r}")
    out = Path(out)
    if out.suffix.lstrip(".").lower() not in ("png", "svg", "pdf"):
        raise LyreError(f"cannot draw {out}: use a file name ending in .png, .svg or .pdf")
    run = load_run(run_dir, checkpoint, device)
    return draw_maps(attention_maps(run.model, run.tokenizer, prompt, kind), out)
