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


NATIVE_BF16_CAPABILITY = (8, 0)
"""The first CUDA compute capability with bf16 tensor cores (Ampere). Older GPUs (V100 7.0, T4 7.5) run bf16
emulated, slower than fp16 with loss scaling: ``torch.cuda.is_bf16_supported()`` counts that emulation as support
unless asked ``including_emulation=False``."""


def bf16_is_native_at(capability: tuple[int, int]) -> bool:
    """Whether a CUDA GPU of compute capability ``capability`` (major, minor) computes bf16 natively."""
    return tuple(capability) >= NATIVE_BF16_CAPABILITY


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 at full speed: a CUDA GPU of compute capability 8.0 or newer (any ROCm GPU,
    as torch's ``is_bf16_supported(including_emulation=False)`` has it), or a CPU with AVX512-BF16 or AMX."""
    if device.type != "cuda":
        return cpu_has_fast_bf16()
    if torch.version.hip:
        return True
    return bf16_is_native_at(torch.cuda.get_device_capability(device))


def resolve_precision(setting: str, device: torch.device) -> str:
    """The autocast dtype to train in: ``bf16``, ``fp16`` (CUDA, with loss scaling) or ``no``."""
    if setting == "auto":
        if has_native_bf16(device):
            return "bf16"
        return "fp16" if device.type == "cuda" else "no"
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
