"""The out-of-memory micro-batch splitter: runs one optimizer step's micro-batches, and when a rank runs out of
GPU memory, halves the micro-batch and doubles gradient accumulation and redoes the step.

Each micro-batch of the schedule is run in ``split`` pieces (1, then 2, 4, ...), each piece's mean loss weighted
by its share of the examples: the same examples per optimizer step, and for a loss that is a mean over examples
(classification, regression, multilabel) the same loss; for a mean over tokens (token classification, causal-lm)
it is a mean of the pieces' means. The schedule, checkpoints and resume positions stay those of the configured
micro-batch. A redone step restores the random generators first, so it draws the dropout masks the failed try
drew, and ends where a run that had halved before that step ends.

Under DDP the ranks agree after each piece, before anything that would start a collective call: after the
backward pass of an unsynchronised piece (``no_sync``), after the forward pass of the step's last piece, whose
backward pass averages the gradients. An out-of-memory error in that backward pass cannot be agreed on and ends
the run, unless gradients are averaged after the backward passes (``sync_after_backward``, switched on by the
first out-of-memory error): then every piece is unsynchronised. Every rank runs the same number of pieces, so
that their agreements pair up: a rank whose micro-batch is shorter than ``split`` (the epoch's last batch) runs
empty pieces first, which compute nothing but still agree. Under FSDP an out-of-memory error is not recovered
(the other ranks wait inside the sharded forward's collectives), so the ranks do not agree after each piece.

An out-of-memory error is torch's, or the RuntimeError of a CUDA library that could not allocate
(:func:`is_out_of_memory`); every other error ends the run as it is.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Collection

import numpy as np
import torch

from kftune.errors import ConfigError
from kftune.training.distributed import Ranks, average_gradients
from kftune.training.rng import rng_state, set_rng_state
from kftune.training.state import MicroBatching

log = logging.getLogger("kftune.train")

OUT_OF_MEMORY_MARKS = (
    "CUDA out of memory",  # the caching allocator (torch.OutOfMemoryError)
    "CUDA error: out of memory",  # a CUDA call that allocates itself (cudaErrorMemoryAllocation)
    "CUBLAS_STATUS_ALLOC_FAILED",  # cuBLAS's workspace or handle
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
    "CUSOLVER_STATUS_ALLOC_FAILED",
)
"""What the RuntimeErrors of CUDA's libraries say when they run out of GPU memory; NCCL's say "out of memory" in an
NCCL error."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` means the GPU ran out of memory: torch's OutOfMemoryError, which only the caching allocator
    raises, or the RuntimeError of a library (cuBLAS, cuDNN, cuSOLVER, NCCL) that failed to allocate its own."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    if not isinstance(error, RuntimeError):
        return False
    message = str(error)
    return any(mark in message for mark in OUT_OF_MEMORY_MARKS) or ("NCCL" in message and "out of memory" in message)


def pieces(indices: np.ndarray, split: int) -> list[np.ndarray]:
    """``indices`` in ``split`` pieces of near-equal size, in order; where there are fewer examples than pieces,
    one example each, after as many empty pieces as it takes to make ``split``."""
    parts = np.array_split(indices, min(split, len(indices)))
    return [indices[:0]] * (split - len(parts)) + parts


class MicroBatchSplitter:
    """Forward and backward passes of each optimizer step's micro-batches, in ``state.split`` pieces.

    ``loss(indices)`` is the training loss of the examples ``indices`` (collated, on the device, under autocast)
    through ``model``, the model the forward passes run through (DDP's wrapper, FSDP's sharded model, or the
    model). ``halve_at_steps`` (1-based optimizer steps) halves deliberately before those steps, as an
    out-of-memory error in them would: for tests, not a setting."""

    def __init__(self, model: torch.nn.Module, loss: Callable[[np.ndarray], torch.Tensor], ranks: Ranks, scaler,
                 batch_size: int, accumulation: int, state: MicroBatching, fsdp: bool = False,
                 halve_at_steps: Collection[int] = ()):
        self.model, self.loss, self.ranks, self.scaler = model, loss, ranks, scaler
        self.batch_size, self.accumulation, self.state = batch_size, accumulation, state
        self.fsdp, self.halve_at_steps = fsdp, halve_at_steps

    def step(self, micro_batches: list[np.ndarray], step: int) -> list[float]:
        """Accumulate the gradients of optimizer step ``step + 1`` (its ``micro_batches``); each micro-batch's
        loss. Raises ConfigError when even micro-batches of one example run out of memory."""
        if step + 1 in self.halve_at_steps:
            self.change_split(self.state.split * 2, "halving requested", step)
        rng_at_start = rng_state()
        while (losses := self._try(micro_batches)) is None:
            self.model.zero_grad(set_to_none=True)
            if self.ranks.device.type == "cuda":
                torch.cuda.empty_cache()
            set_rng_state(rng_at_start)  # the redone step draws the same dropout masks
            if math.ceil(self.batch_size / self.state.split) == 1:
                raise ConfigError(
                    "out of memory at micro-batch 1: use a smaller model or max_train_length, or more memory"
                )
            self.change_split(self.state.split * 2, "out of memory", step)
        return losses

    def change_split(self, new_split: int, reason: str, step: int) -> None:
        """Run micro-batches in ``new_split`` pieces from optimizer step ``step + 1`` on."""
        split, accumulation, batch_size = self.state.split, self.accumulation, self.batch_size
        old_micro, new_micro = math.ceil(batch_size / split), math.ceil(batch_size / new_split)
        if self.ranks.distributed and not self.fsdp and not self.state.sync_after_backward:
            self.state.sync_after_backward = True  # memory is tight: the next error may come in the backward pass
            if self.ranks.is_main:
                log.warning("from optimizer step %d on, gradients are averaged after the backward pass "
                            "(ddp_gradient_sync=after_backward), so that an out-of-memory error there can be "
                            "recovered too", step + 1)
        if self.ranks.is_main:
            (log.warning if reason == "out of memory" else log.info)(
                "%s in optimizer step %d: micro-batch %d -> %d, gradient accumulation %d -> %d "
                "(the same %d examples per step)%s", reason, step + 1, old_micro, new_micro, accumulation * split,
                accumulation * new_split, batch_size * accumulation,
                "; redoing the step" if reason == "out of memory" else "",
            )
        self.state.changes.append({"step": step + 1, "micro_batch": new_micro,
                                   "gradient_accumulation": accumulation * new_split, "reason": reason})
        self.state.split = new_split

    def _try(self, micro_batches: list[np.ndarray]) -> list[float] | None:
        """One try at the step: the micro-batches' losses, or None when a rank ran out of memory (then every rank
        returns None, and the step must be redone)."""
        ranks, scaler = self.ranks, self.scaler
        # FSDP reduce-scatters the gradients in every backward pass (it has no no_sync), and those collectives are
        # the same on every rank: every piece counts as synchronised
        sync_in_backward = ranks.distributed and (self.fsdp or not self.state.sync_after_backward)
        losses = []  # on the device, read once at the end: reading each piece's would wait for the GPU each time
        for number, indices in enumerate(micro_batches):
            parts = pieces(indices, self.state.split)
            micro_loss = torch.zeros((), dtype=torch.float64, device=ranks.device)
            for n, piece in enumerate(parts):
                last = number == len(micro_batches) - 1 and n == len(parts) - 1
                synced = sync_in_backward and (self.fsdp or last)
                weight = len(piece) / len(indices)
                out_of_memory, loss = False, None
                try:
                    with self._no_sync(not synced):
                        if len(piece):
                            loss = self.loss(piece)
                            if not synced:
                                scaler.scale(loss * weight / self.accumulation).backward()
                except RuntimeError as error:
                    # under FSDP the other ranks wait in the sharded forward's collectives: no agreement can follow
                    if self.fsdp or not is_out_of_memory(error):
                        raise
                    out_of_memory, loss = True, None
                if not self.fsdp and ranks.any(out_of_memory):  # (under FSDP it would always be False)
                    self._reset_ddp()
                    return None
                if loss is None:  # an empty piece
                    continue
                if synced:
                    try:
                        scaler.scale(loss * weight / self.accumulation).backward()
                    except RuntimeError as error:
                        if not is_out_of_memory(error):
                            raise
                        raise ConfigError(
                            f"out of memory in the backward pass of a micro-batch of {len(piece)} "
                            f"(rank {ranks.rank}), where the ranks cannot agree to retry: lower "
                            "per_device_train_batch_size, or set ddp_gradient_sync=after_backward"
                        ) from error
                micro_loss += loss.detach().double() * weight  # in float64, as Python floats would add them
            losses.append(micro_loss)
        if ranks.distributed and not sync_in_backward:
            average_gradients(self.model, ranks.world)
        return torch.stack(losses).tolist()

    def _no_sync(self, unsynchronised: bool):
        """DDP's no_sync for a piece whose backward pass must not average gradients."""
        if unsynchronised and self.ranks.distributed and not self.fsdp:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _reset_ddp(self) -> None:
        """DDP's state back to that of a step's start, the same on every rank (a rank whose forward failed did not
        finish it): no backward expected, buffers broadcast in the next forward."""
        if self.ranks.distributed and not self.fsdp:
            self.model.reducer._reset_state()
            self.model.require_forward_param_sync = True
