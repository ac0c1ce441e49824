"""Which device and number format a run uses: one place for `device=auto`, autocast and compile."""

from __future__ import annotations

import importlib.util
from contextlib import AbstractContextManager, nullcontext

import torch

from lyre.core.errors import LyreError


def resolve_device(name: str) -> torch.device:
    """cuda > mps > cpu for "auto"; asking for a device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LyreError("train.device=cuda but CUDA is not available on this machine; use device=cpu")
    if name == "mps" and not _mps_available():
        raise LyreError("train.device=mps but MPS is not available on this machine; use device=cpu")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise LyreError(f"train.device must be auto, cpu, cuda or mps; got {name!r}")
    return torch.device(name)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def autocast_context(device: torch.device, dtype: str) -> AbstractContextManager:
    """bf16 autocast on CUDA by default; fp32 elsewhere (CPU bf16 is slower than fp32 for us)."""
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    if dtype == "float32":
        return nullcontext()
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise LyreError(f"train.dtype must be auto, float32 or bfloat16; got {dtype!r}")


def compute_dtype(device: torch.device, dtype: str) -> torch.dtype:
    """The dtype the matmuls run in (for MFU): what autocast_context picks."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if dtype == "bfloat16" else torch.float32


def should_compile(setting: bool | None, device: torch.device) -> bool:
    """train.compile if set; by default on CUDA where torch.compile works (Triton, sm >= 7.0)."""
    if setting is not None:
        return setting
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (7, 0):
        return False
    if importlib.util.find_spec("triton") is None:
        return False
    from torch._dynamo import config as dynamo_config

    dynamo_config.suppress_errors = True  # a graph it cannot compile runs eagerly instead
    return True
