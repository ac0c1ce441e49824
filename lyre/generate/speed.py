"""Faster CPU inference: how the Linear weights of a loaded model are stored and multiplied.

Nothing here is needed to understand the model or the engine; it only makes generation on a
CPU faster, and it is applied explicitly, once, when a model is loaded for inference:

    model = prepare_for_inference(model, weights="fp32" | "fp16" | "int8")

`load_run` and the CLI (`lyre sample/chat/serve --fp16/--int8`) call it; `Engine(model)` never
does, so generating from a model in the middle of training leaves it exactly as it was.

- `OneDNNLinear` (fp32, the CPU default): Linear layers multiply by a copy of the weight that
  oneDNN reordered once into its blocked layout. Where a torch build lacks it,
  `use_cpu_decode_layout` stores the weights transposed instead.
- `add_fp16_copies` (`--fp16`): an fp16 copy of every Linear weight for inputs of a few rows.
- `quantize_int8` (`--int8`): dynamic int8 Linear weights.

Figures: docs/benchmarks.md and docs/log.md, from bench/generate.py and bench/serve_load.py.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyre.core.errors import LyreError

WEIGHTS = ("fp32", "fp16", "int8")  # how inference may store the Linear weights (--fp16, --int8)


def prepare_for_inference(model: nn.Module, weights: str = "fp32") -> nn.Module:
    """`model`, changed in place for fast inference: its Linear weights as `weights` says, and on
    a CPU multiplied through oneDNN (or stored transposed where this torch has no oneDNN).

    Values and state_dict keys stay those of the trained model (int8 and fp16 round them).
    A model on a GPU is returned unchanged for "fp32"; "fp16" and "int8" are CPU-only.
    """
    model = convert_weights(model, weights)
    if _device_of(model).type == "cpu" and not use_onednn_linears(model):
        use_cpu_decode_layout(model)
    return model


def convert_weights(model: nn.Module, weights: str) -> nn.Module:
    """`model` with its Linear weights as `weights` says: fp32 as trained, fp16 copies for
    decoding, or int8 (see add_fp16_copies and quantize_int8). CPU only for the last two."""
    if weights not in WEIGHTS:
        raise LyreError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    if weights == "fp16":
        return add_fp16_copies(model)
    if weights == "int8":
        return quantize_int8(model)
    return model


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------------------------
# fp32: oneDNN-packed weights, or the transposed layout


class OneDNNLinear(nn.Linear):
    """nn.Linear that, in inference on the CPU, multiplies by a oneDNN-packed copy of its weight.

    Why: oneDNN's linear, with the weight reordered once into its blocked layout, runs 1.1x (one
    row) to 1.8x (32 rows) faster per decode step than the default CPU path, and the output layer
    alone 3x at 8-32 rows (bench/generate.py, bench/serve_load.py). Same parameters, buffers and
    state_dict as the Linear it was. The packed copy (an opaque tensor, not a buffer) is made on
    first use and made again whenever the weight changed (its version counter), so training the
    model further, or loading weights, is always seen. With gradients on (training) or off the CPU
    it is a plain Linear. Costs a second copy of the weights in memory.
    """

    _packed: torch.Tensor | None = None
    _packed_version: int = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
            return F.linear(x, self.weight, self.bias)
        if self._packed is None or self._packed_version != self.weight._version:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 1)
            self._packed_version = self.weight._version
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    def __getstate__(self) -> dict:
        state = super().__getstate__().copy()
        state.pop("_packed", None)  # opaque tensors cannot be copied; packed again on first use
        state.pop("_packed_version", None)
        return state


@functools.cache  # a property of the torch build: checked once per process
def onednn_linear_works() -> bool:
    """Whether this torch build has oneDNN's packed linear and it computes F.linear."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        w, b, x = torch.randn(8, 4), torch.randn(8), torch.randn(2, 3, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
        return torch.allclose(y, F.linear(x, w, b), atol=1e-5)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def use_onednn_linears(model: nn.Module) -> bool:
    """Make every plain fp32 nn.Linear of `model` a OneDNNLinear, in place; False when this torch
    cannot (then nothing changes)."""
    if not onednn_linear_works():
        return False
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.dtype == torch.float32:
            module.__class__ = OneDNNLinear  # same object, parameters, hooks and state_dict
    return True


def use_cpu_decode_layout(model: nn.Module) -> None:
    """Store every Linear weight of `model` transposed in memory: same values, shapes, state_dict.

    Why: a decode step at batch 1 is one matrix-vector product per weight, and on CPU (MKL) x @ W
    with W stored [in, out] runs ~1.5x faster than with nn.Linear's [out, in] (bench/generate.py;
    it is the layout of GPT-2's Conv1D). F.linear(x, w) computes x @ w.t(), and w.t() is then
    contiguous. Training and checkpoints work unchanged (they copy to contiguous when saving).
    """
    with torch.no_grad():
        for module in model.modules():
            w = getattr(module, "weight", None)
            if isinstance(module, nn.Linear) and w is not None and w.dim() == 2 and w.stride(0) != 1:
                w.data = w.data.t().contiguous().t()  # tied weights share the Parameter: done once


# ----------------------------------------------------------------------------------------------
# Fewer bytes per weight: fp16 copies, int8


class HalfCopyLinear(nn.Module):
    """A Linear that also holds an fp16 copy of its weights, for inputs of a few rows (decoding).

    Why: a decode step of a few rows is bound by reading the weights. fp16 halves the bytes, and
    on a CPU with F16C torch's fp16 matrix-vector kernel runs ~2x faster than fp32's (12 vs 26 ms
    for GPT-2 124M's blocks on 2 cores, docs/log.md); end to end, batch-1 decoding runs ~1.7x
    faster than fp32 (bench/generate.py). Inputs of more than `max_rows` rows (prompts, batches)
    use the fp32 weights: without native fp16 arithmetic, fp16 matrix-matrix products are slow
    (at 8 rows already slower than fp32 here). The fp16 copy stays [out, in]: transposed, torch's
    fp16 kernel is ~15x slower.
    The input is rounded to fp16 (relative error ~5e-4), the sums are fp32, the output is fp32.
    """

    def __init__(self, linear: nn.Linear, max_rows: int = 4) -> None:
        super().__init__()
        self.linear, self.max_rows = linear, max_rows
        bias = linear.bias.detach().half() if linear.bias is not None else None
        self.register_buffer("weight16", linear.weight.detach().half().contiguous(), persistent=False)
        self.register_buffer("bias16", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() > self.max_rows * x.size(-1):
            return self.linear(x)
        return F.linear(x.half(), self.weight16, self.bias16).to(x.dtype)


def add_fp16_copies(model: nn.Module, max_rows: int = 4) -> nn.Module:
    """Wrap every Linear of `model` in a HalfCopyLinear, in place (CPU inference only).

    Costs half the weights' memory again; logits differ from fp32 by fp16 rounding (~1e-3).
    """
    if _device_of(model).type != "cpu":
        raise LyreError("fp16 weight copies are for CPU inference; use --device cpu")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, HalfCopyLinear(child, max_rows))
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """Give `model`'s Linear layers int8 weights in place (dynamic quantization; CPU only).

    Activations stay fp32 and each matmul quantizes its input on the fly. A quarter of the weight
    bytes: 1.5-3x faster decoding on CPU (bench/generate.py), at the price of slightly different
    logits, so greedy tokens can part from the fp32 model's after a while (tests/test_engine.py).
    """
    if _device_of(model).type != "cpu":
        raise LyreError("int8 weights are for CPU inference; use --device cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notice that it moves to torchao
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
