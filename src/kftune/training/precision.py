"""Mixed precision in one place: which autocast dtype a run trains in, the autocast context for it, and the loss
scaling fp16 needs."""

from __future__ import annotations

from pathlib import Path

import torch

from kftune.errors import ConfigError


def cpu_has_fast_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX (bf16 matmuls several times faster than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(setting: str, device: torch.device) -> str:
    """The autocast dtype to train in: ``bf16``, ``fp16`` (CUDA, with loss scaling) or ``no``."""
    if setting == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_fast_bf16() else "no"
    if setting == "fp16" and device.type != "cuda":
        raise ConfigError("mixed_precision=fp16 needs a CUDA GPU (use bf16 or no on CPU)")
    return setting


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """The autocast context of the forward passes (training and validation) in ``precision``; off for ``no``."""
    return torch.autocast(
        device.type, dtype=AUTOCAST_DTYPES.get(precision, torch.bfloat16), enabled=precision in AUTOCAST_DTYPES
    )


def loss_scaler(precision: str) -> torch.amp.GradScaler:
    """fp16's loss scaling (its gradients underflow without it); a pass-through for every other precision."""
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16")
