"""The processes of a training job: which one this is, its device, and what the ranks agree on.

torchrun starts one process per GPU (or N CPU processes) and tells each its place through the environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); a process started alone is a job of one. :class:`Ranks` is that
place, decided once at start-up; the collective calls the loop needs (agree on a flag, take rank 0's decision,
gather every rank's value) are its methods, each a no-op in a job of one, so the loop calls them unconditionally.
Used as a context manager (``with Ranks.start() as ranks:``) it leaves the process group when the block ends, on
an error too.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from kftune.errors import ConfigError

COLLECTIVE_TIMEOUT = timedelta(hours=2)
"""How long a rank waits in a collective call. The default (10 minutes for NCCL) is shorter than what the other
ranks may spend waiting while rank 0 alone validates a large split or writes (and for LoRA merges) the model."""

CUDA_ALLOCATOR_SETTINGS = "expandable_segments:True"
"""The CUDA caching allocator's settings unless the user gives their own (``PYTORCH_CUDA_ALLOC_CONF`` or
``PYTORCH_ALLOC_CONF``): segments that grow in place instead of new fixed-size blocks, so that memory freed by
batches of other lengths is reused rather than fragmented (fewer out-of-memory errors with free memory left)."""


def use_expandable_segments(environ=os.environ) -> None:
    """Put :data:`CUDA_ALLOCATOR_SETTINGS` in ``environ`` unless allocator settings are there already. The
    allocator reads them once, when CUDA first allocates: this must run before that."""
    if "PYTORCH_CUDA_ALLOC_CONF" not in environ and "PYTORCH_ALLOC_CONF" not in environ:
        environ["PYTORCH_CUDA_ALLOC_CONF"] = CUDA_ALLOCATOR_SETTINGS


def process_group_options(device: torch.device) -> dict:
    """``init_process_group``'s arguments for a rank on ``device``: NCCL on a GPU, bound to it (``device_id``: the
    communicator is made now, and barriers and object collectives know the rank's GPU instead of guessing it from
    the rank), gloo on CPUs; :data:`COLLECTIVE_TIMEOUT` either way."""
    if device.type == "cuda":
        return {"backend": "nccl", "timeout": COLLECTIVE_TIMEOUT, "device_id": device}
    return {"backend": "gloo", "timeout": COLLECTIVE_TIMEOUT}


def gpus_given(env: Mapping[str, str]) -> str:
    """What in ``env`` says this container was given GPUs, or "" where nothing does: NVIDIA's device plugin and
    container runtime set ``NVIDIA_VISIBLE_DEVICES`` to the GPUs a pod requested (their UUIDs, or a path for the
    volume-mounts strategy), ``docker run --gpus`` to ``all`` or a list; ``none``/``void``/empty give none."""
    visible = env.get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if visible and visible not in ("none", "void"):
        return f"NVIDIA_VISIBLE_DEVICES={visible} says this container was given GPUs"
    return ""


def refuse_training_on_cpu_with_gpus_given(env: Mapping[str, str], torch_version: str, gpu_build: str | None,
                                           gpus: int) -> None:
    """Stop before training on the CPU when the container was given GPUs (:func:`gpus_given`) that torch cannot use:
    a CPU build of torch (``gpu_build``: ``torch.version.cuda`` or ``torch.version.hip``, None for a CPU build) would
    otherwise train on the CPU, hours instead of minutes, without a word; a CUDA build that sees no GPU (``gpus``
    visible: 0) lacks the driver."""
    given = gpus_given(env)
    if not given or gpus:
        return
    if gpu_build is None:
        raise ConfigError(f"{given}, but torch {torch_version} is the CPU build: training would run on the CPU. Run "
                          "the train and tune stages in the CUDA images (make images TORCH_VARIANT=cu126 builds "
                          "kftune-train and kftune-tune on kftune-base-cuda; images/README.md)")
    raise ConfigError(f"{given}, but torch {torch_version} sees none: the NVIDIA driver is not reachable in this "
                      "container (the node's GPU operator or NVIDIA container runtime; nvidia-smi should list them)")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the training job."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    distributed: bool
    """Started by torchrun (even for a world of one): DDP or FSDP wraps the model and the ranks talk."""

    @property
    def is_main(self) -> bool:
        """Rank 0: it logs, validates, writes checkpoints and the model."""
        return self.rank == 0

    @classmethod
    def start(cls) -> Ranks:
        """Set up this process's device (CUDA ``LOCAL_RANK``, else the CPU) and, under torchrun, join the process
        group (NCCL on CUDA, gloo on CPUs)."""
        distributed = "WORLD_SIZE" in os.environ
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        use_expandable_segments()  # before the first CUDA call of the process
        if torch.cuda.is_available():
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:  # a worker started without the launcher (a TrainJob node) is checked here
            refuse_training_on_cpu_with_gpus_given(os.environ, torch.__version__,
                                                   torch.version.cuda or torch.version.hip, 0)
            device = torch.device("cpu")
        if distributed and not dist.is_initialized():
            dist.init_process_group(**process_group_options(device))
        return cls(
            rank=dist.get_rank() if distributed else 0,
            world=dist.get_world_size() if distributed else 1,
            local_rank=local_rank,
            device=device,
            distributed=distributed,
        )

    def any(self, flag: bool) -> bool:
        """True if ``flag`` is true on any rank (an all-reduce: every rank must call it)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def from_main(self, value):
        """Rank 0's ``value`` on every rank (a broadcast: every rank must call it)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's ``value``, in rank order (an all-gather: every rank must call it)."""
        if not self.distributed:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def finish(self) -> None:
        """Wait for every rank, then leave the process group."""
        if self.distributed and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def leave(self) -> None:
        """Leave the process group at once, without waiting for the other ranks: the way out on an error, where
        they may be waiting in a collective call this rank will never make (a barrier would hang) or be gone."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def __enter__(self) -> Ranks:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        """The block ended: :meth:`finish` when it ran to its end, :meth:`leave` when an exception ends it."""
        if error_type is None:
            self.finish()
        else:
            self.leave()


class Preemption:
    """Turns SIGTERM into a request to checkpoint and stop at the next optimizer step.

    Every rank gets SIGTERM (torchrun forwards it), but not at the same step, so the ranks
    agree through an all-reduce before anyone stops."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():  # signal handlers live there
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def agreed(self, ranks: Ranks) -> bool:
        """True once any rank has been asked to stop (every rank must call it)."""
        return ranks.any(self.requested)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def average_gradients(model: torch.nn.Module, world: int, bucket_bytes: int = 25 * 1024**2) -> None:
    """Average the trainable parameters' gradients over the ranks as DDP does (divided by the world size, then
    summed by all-reduce, in buckets of about ``bucket_bytes``), for gradients accumulated under ``no_sync``."""
    buckets, size = [[]], 0
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if param.grad is None:  # unused in this rank's forward: DDP counts it as zero
            param.grad = torch.zeros_like(param)
        grad = param.grad
        if buckets[-1] and (size >= bucket_bytes or grad.dtype != buckets[-1][0].dtype):
            buckets.append([])
            size = 0
        buckets[-1].append(grad)
        size += grad.numel() * grad.element_size()
    for bucket in filter(None, buckets):
        flat = torch.cat([g.reshape(-1) for g in bucket]).div_(world)
        dist.all_reduce(flat)
        for g, averaged in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
            g.copy_(averaged.view_as(g))
