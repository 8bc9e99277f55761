"""How much memory CPU training needs at its peak, estimated before the first step, and how much the machine has.

The estimate (bytes, fp32 throughout):

- weights: 4 bytes per parameter;
- for each trainable parameter a gradient and AdamW's two moments: 3 x 4 bytes;
- activations kept for the backward pass: per token and per layer ``ACTIVATION_VALUES`` x hidden
  values plus the attention scores (``ATTENTION_VALUES`` x heads x sequence length), 4 bytes each.
  The counts are those of Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models" (34·h + 5·a·s bytes per token per layer in 16-bit, i.e. 17·h + 2.5·a·s values);
- for a causal LM the logits over the vocabulary, kept in fp32 with their softmax and its gradient
  (``LOGIT_COPIES`` copies of batch x length x vocabulary);
- ``PROCESS_OVERHEAD`` per process: the interpreter, torch, transformers, the tokenized data.

It is an estimate meant to refuse runs that cannot fit (a batch of 256 long texts on a laptop)
with a clear message instead of the kernel's OOM killer, not an exact figure.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kftune.errors import ConfigError

log = logging.getLogger("kftune.train")

GIB = 1024**3
BYTES = 4  # fp32
ACTIVATION_VALUES = 17
ATTENTION_VALUES = 2.5
LOGIT_COPIES = 3
PROCESS_OVERHEAD = GIB // 2


@dataclass(frozen=True)
class MemoryEstimate:
    """The parts of a training process's peak memory, in bytes."""

    weights: int
    optimizer: int  # gradients and AdamW's two moments of the trainable parameters
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.activations + self.overhead


def estimate_training_memory(
    total_params: int,
    trainable_params: int,
    batch_size: int,
    seq_len: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int = 0,
    vocab_size: int = 0,
) -> MemoryEstimate:
    """The peak memory of one training process (see the module docstring); ``vocab_size`` only for causal LMs."""
    tokens = batch_size * seq_len
    per_token_layer = ACTIVATION_VALUES * hidden_size + ATTENTION_VALUES * num_heads * seq_len
    activations = tokens * num_layers * per_token_layer + LOGIT_COPIES * tokens * vocab_size
    return MemoryEstimate(
        weights=BYTES * total_params,
        optimizer=3 * BYTES * trainable_params,
        activations=int(BYTES * activations),
        overhead=PROCESS_OVERHEAD,
    )


def available_memory(meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process may still allocate: MemAvailable, or less where a cgroup (v2) limit is lower;
    None where neither can be read (not Linux)."""
    found = []
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((cgroup / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def check_training_memory(estimate: MemoryEstimate, processes: int = 1, available: int | None = None) -> None:
    """Refuse (ConfigError) a run whose ``processes`` training processes on this machine would need more than the
    available memory; the weights count as already loaded."""
    available = available_memory() if available is None else available
    if available is None:
        return
    needed = processes * (estimate.total - estimate.weights)
    if needed > available:
        raise ConfigError(
            f"training needs about {gib(processes * estimate.total)} of memory ({processes} process(es): "
            f"weights {gib(estimate.weights)}, gradients and optimizer state {gib(estimate.optimizer)}, "
            f"activations {gib(estimate.activations)} each) but only {gib(available)} more is available: "
            "lower per_device_train_batch_size (raising gradient_accumulation_steps keeps the effective batch), "
            "lower max_train_length, or use training_mode=lora"
        )


def check_model_fits(model, batch_size: int, seq_len: int, vocab_size: int = 0, log_estimate: bool = True) -> None:
    """Refuse (ConfigError) to train ``model`` on micro-batches of ``batch_size`` texts of up to ``seq_len`` tokens
    where this machine's processes (``LOCAL_WORLD_SIZE``) would not fit its memory; ``vocab_size`` for a causal
    LM's output layer. The estimate goes to the log (``log_estimate``: on one rank)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    shape = {name: getattr(model.config, name, 0) or 0
             for name in ("hidden_size", "num_hidden_layers", "num_attention_heads")}
    estimate = estimate_training_memory(total, trainable, batch_size, seq_len, shape["hidden_size"],
                                        shape["num_hidden_layers"], shape["num_attention_heads"], vocab_size)
    if log_estimate:
        log.info("estimated peak memory per process %s (weights %s, gradients and optimizer state %s, "
                 "activations %s)", gib(estimate.total), gib(estimate.weights), gib(estimate.optimizer),
                 gib(estimate.activations))
    check_training_memory(estimate, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
