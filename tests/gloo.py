"""Run a function on 2 CPU processes joined in a gloo process group, as torchrun's ranks would be, in seconds: for
tests of what the ranks must do together (pair up their collective calls, shard a model) without torchrun."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kftune.training.distributed import Ranks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, function, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    with Ranks.start() as ranks:
        function(ranks, *args)


def run_ranks(function, *args, world: int = 2, timeout: float = 120) -> None:
    """``function(ranks, *args)`` on each of ``world`` gloo ranks (a module-level function: the processes are
    spawned). An exception on a rank fails the test with its traceback; ranks still running after ``timeout``
    seconds (a hang: collective calls that do not pair up) are killed and fail it."""
    context = mp.start_processes(_rank, args=(world, free_port(), function, args), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"the {world} ranks were still running after {timeout:.0f} s (hung in a collective call?)")


def all_equal(ranks: Ranks, value) -> bool:
    """Whether every rank has the same ``value`` (an all-gather: every rank must call it)."""
    values = [None] * ranks.world
    dist.all_gather_object(values, value)
    return all(v == values[0] for v in values)
