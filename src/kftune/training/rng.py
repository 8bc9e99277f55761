"""The random generators a training run draws from (Python, NumPy, torch CPU and CUDA): seeded at the start,
saved into every checkpoint and restored on resume, so that a resumed run draws the same dropout masks as one that
was never interrupted; restored too when the micro-batch splitter redoes an optimizer step."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's random generator states (CPU, and its GPU's), in a form ``torch.load(weights_only=True)``
    reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's GPU's (the current device), the only one it uses
    return state


def set_rng_state(state: dict) -> None:
    """Put back the generator states of :func:`rng_state` (the CUDA one on this process's GPU)."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        cuda = cuda_rng_state(state, torch.cuda.current_device())
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def cuda_rng_state(state: dict, device_index: int) -> torch.Tensor | None:
    """The CUDA generator state to restore on GPU ``device_index`` from a saved ``state``: the one it holds (its
    rank's GPU's); from an older kftune's, which held every GPU's (a list), this GPU's entry if it has one. None where
    there is none (saved on CPUs, or on fewer GPUs): the generator keeps its seeded state, where restoring every
    saved GPU's state would fail on a machine with fewer GPUs."""
    cuda = state.get("cuda")
    if isinstance(cuda, torch.Tensor):
        return cuda
    if isinstance(cuda, list | tuple) and device_index < len(cuda):
        return cuda[device_index]
    return None
