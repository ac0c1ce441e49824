"""Model FLOPs utilization: how much of the GPU's peak the training actually uses.

MFU = achieved FLOP/s / peak FLOP/s, where achieved = tokens per second x training FLOPs per
token of the model (lyre.train.info.model_cost(...).flops_per_token: 6 N + 12 L T d, as PaLM and
nanoGPT count). The peak is the dense (no sparsity) bf16 tensor-core throughput from the vendor's
datasheet, so MFU is only reported for bf16 training. Unknown devices report tokens/s only;
set LYRE_PEAK_FLOPS (FLOP/s per device, e.g. 312e12) to get MFU on one that is not listed.
"""

from __future__ import annotations

import os
import re

import torch

# (model in torch.cuda.get_device_name(), dense bf16 FLOP/s). A model matches as a whole word
# ("A10" is not "A100" nor "A1000") and the first match wins, so "H100 PCIe" precedes "H100".
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200 NVL", 835e12),
    ("H200", 989e12),  # SXM
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),  # SXM and PCIe
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),  # dense, fp32 accumulate
    ("RTX 3090", 71e12),
    ("RTX A6000", 155e12),
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def peak_flops(device: torch.device, dtype: torch.dtype | None) -> float | None:
    """Peak dense FLOP/s of one `device` for training in `dtype`, or None when unknown.

    LYRE_PEAK_FLOPS overrides the table (any device, any dtype).
    """
    override = os.environ.get("LYRE_PEAK_FLOPS")
    if override:
        try:
            value = float(override)
        except ValueError:
            return None
        return value if value > 0 else None
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    return lookup_peak(torch.cuda.get_device_name(device))


def lookup_peak(name: str) -> float | None:
    """The table entry for a device name such as "NVIDIA H100 80GB HBM3"."""
    for key, flops in PEAK_BF16_FLOPS:
        if re.search(rf"(?<![a-z0-9]){re.escape(key.lower())}(?![a-z0-9])", name.lower()):
            return flops
    return None


def mfu(tokens_per_s_per_device: float, flops_per_token: float, peak: float | None) -> float | None:
    """Fraction of the peak used (0..1), or None without a known peak."""
    if not peak:
        return None
    return tokens_per_s_per_device * flops_per_token / peak
