"""Random number generator states as JSON-safe data, for checkpoints and distributed runs.

Resuming must continue every random stream exactly (dropout masks, the batches a task draws) or
a resumed run diverges from an uninterrupted one. Binary states become base64 strings, so they
ride in a checkpoint's state.json, never in a pickle.
"""

from __future__ import annotations

import base64
import binascii
import random
from typing import Any

import numpy as np
import torch

from lyre.core.errors import LyreError, first_line


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def tensor_to_b64(state: torch.Tensor) -> str:
    return _b64(state.cpu().numpy().tobytes())


def b64_to_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(_unb64(text)), dtype=torch.uint8)


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot every random number generator training touches, as JSON-safe data.

    Resuming must continue the same random streams (dropout masks, data batches) or a resumed
    run diverges from an uninterrupted one. Covers Python's `random`, NumPy's global RNG,
    torch's CPU RNG, every CUDA device's RNG (if CUDA is available), and named generators
    such as the one that draws training batches. Binary states are base64 strings.
    """
    version, mt, gauss_next = random.getstate()
    np_alg, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "mt": _b64(np.asarray(mt, dtype="<u4").tobytes()),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "algorithm": np_alg,
            "keys": _b64(np.asarray(np_keys, dtype="<u4").tobytes()),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": tensor_to_b64(torch.get_rng_state()),
        "cuda": [],
        "generators": {name: tensor_to_b64(g.get_state()) for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = [tensor_to_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(
    state: dict[str, Any], generators: dict[str, torch.Generator] | None = None
) -> None:
    """Put every RNG back where capture_rng_state found it.

    CUDA states are restored for as many devices as both the checkpoint and this machine have,
    so a GPU run can be resumed on CPU (its CUDA streams are then simply not used).
    """
    generators = generators or {}
    missing = [name for name in generators if name not in state.get("generators", {})]
    if missing:
        raise LyreError(f"checkpoint has no RNG state for generator '{missing[0]}'")
    try:
        py = state["python"]
        mt = np.frombuffer(_unb64(py["mt"]), dtype="<u4")
        random.setstate((py["version"], tuple(int(x) for x in mt), py["gauss_next"]))
        npy = state["numpy"]
        keys = np.frombuffer(_unb64(npy["keys"]), dtype="<u4").astype(np.uint32)
        np.random.set_state(
            (npy["algorithm"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
        )
        torch.set_rng_state(b64_to_tensor(state["torch"]))
        if torch.cuda.is_available():
            for device, text in enumerate(state["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(b64_to_tensor(text), device)
        for name, generator in generators.items():
            generator.set_state(b64_to_tensor(state["generators"][name]))
    except (KeyError, TypeError, ValueError, RuntimeError, binascii.Error) as e:
        raise LyreError(
            f"checkpoint has an invalid RNG state ({type(e).__name__}: {first_line(e)})"
        ) from e
