"""Mixed precision in one place: which autocast dtype a run trains in, and the autocast context for it."""

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
    return torch.autocast(
        device.type, dtype=AUTOCAST_DTYPES.get(precision, torch.bfloat16), enabled=precision in AUTOCAST_DTYPES
    )
