"""The processes of a training job (kftune.training.distributed): the process group's options, leaving it on
success and on an error, the CUDA allocator's settings; and what 2 gloo processes must do together: as many
collective calls on every rank after a halving."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist

from kftune.training import distributed, precision
from kftune.training.config import TrainConfig
from kftune.training.distributed import COLLECTIVE_TIMEOUT, Ranks, process_group_options, use_expandable_segments
from kftune.training.microbatch import MicroBatchSplitter
from kftune.training.state import MicroBatching
from tests.gloo import all_equal, free_port, run_ranks


def _unset(monkeypatch, name: str) -> None:
    """Remove ``name`` from the environment for this test (and put back what was there after it)."""
    monkeypatch.setenv(name, "")
    monkeypatch.delenv(name)


@pytest.fixture
def world_of_one(monkeypatch):
    """The environment torchrun gives a job of one process: Ranks.start joins a gloo process group."""
    for name, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_the_process_group_gets_the_long_timeout_and_a_gpu_its_device():
    assert process_group_options(torch.device("cpu")) == {"backend": "gloo", "timeout": COLLECTIVE_TIMEOUT}
    gpu = torch.device("cuda", 3)
    assert process_group_options(gpu) == {"backend": "nccl", "timeout": COLLECTIVE_TIMEOUT, "device_id": gpu}
    assert COLLECTIVE_TIMEOUT.total_seconds() >= 3600


def test_a_rank_joins_with_the_timeout_and_leaves_when_done(world_of_one):
    with Ranks.start() as ranks:
        assert ranks.distributed and dist.is_initialized()
        group = dist.distributed_c10d._get_default_group()
        assert group._get_backend(torch.device("cpu")).options._timeout == COLLECTIVE_TIMEOUT
    assert not dist.is_initialized()


def test_an_error_leaves_the_process_group_without_waiting_for_the_others(world_of_one, monkeypatch):
    def barrier(*args, **kwargs):
        raise AssertionError("a barrier on the error path waits for ranks that may never come")

    monkeypatch.setattr(dist, "barrier", barrier)
    with pytest.raises(ValueError, match="boom"), Ranks.start():
        raise ValueError("boom")
    assert not dist.is_initialized()


def test_a_failed_training_run_leaves_the_process_group(world_of_one, monkeypatch, tmp_path, prepared, tiny_model):
    from kftune.training import loop

    def fail(*args, **kwargs):
        raise ValueError("boom in the first forward pass")

    monkeypatch.setattr(loop, "training_loss", fail)
    config = TrainConfig(model=str(tiny_model), num_train_epochs=1, max_steps=2, early_stopping_patience=0)
    with pytest.raises(ValueError, match="boom"):
        loop.train(config, prepared, tmp_path / "m")
    assert not dist.is_initialized()


def test_cuda_memory_grows_in_expandable_segments_unless_the_user_says_otherwise(monkeypatch):
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "WORLD_SIZE"):
        _unset(monkeypatch, name)
    Ranks.start()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert distributed.CUDA_ALLOCATOR_SETTINGS == "expandable_segments:True"
    own = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}
    use_expandable_segments(own)
    assert own == {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}
    newer_name = {"PYTORCH_ALLOC_CONF": "expandable_segments:False"}
    use_expandable_segments(newer_name)
    assert newer_name == {"PYTORCH_ALLOC_CONF": "expandable_segments:False"}


class SquaredError(torch.nn.Module):
    """A model whose forward pass is the loss of the examples it is given (DDP averages what goes through it)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        return ((self.linear(x[indices]).squeeze(-1) - x[indices].sum(-1)) ** 2).mean()


def _short_last_batch_after_halving(ranks: Ranks) -> None:
    all_reduce, calls = dist.all_reduce, []

    def counted(tensor, *args, **kwargs):
        calls.append(tensor.numel())
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counted
    # the epoch's last optimizer step: rank 1's last micro-batch is the epoch's short one (3 examples)
    micro_batches = [np.arange(0, 4), np.arange(8, 12)] if ranks.rank == 0 else [np.arange(4, 8), np.arange(12, 15)]
    # in 4 pieces with DDP averaging in the last one's backward pass; then halved from 2 to 4 pieces by an
    # out-of-memory error (as requested here), after which the gradients are averaged after the backward passes
    for state, halve, averaged_after in ((MicroBatching(split=4), (), 0), (MicroBatching(split=2), {2}, 1)):
        model = torch.nn.parallel.DistributedDataParallel(SquaredError())
        splitter = MicroBatchSplitter(model, lambda indices, m=model: m(torch.as_tensor(indices)), ranks,
                                      precision.loss_scaler("no"), batch_size=4, accumulation=2, state=state,
                                      halve_at_steps=halve)
        calls.clear()
        splitter.step(micro_batches, step=1)
        assert splitter.state.split == 4 and splitter.state.sync_after_backward == bool(averaged_after)
        # one agreement per piece, the empty one of the short micro-batch too, then the averaging
        assert calls == [1] * 8 + [5] * averaged_after, calls
        assert all_equal(ranks, calls)
        assert all_equal(ranks, model.module.linear.weight.grad.tolist())  # averaged over the ranks
    dist.all_reduce = all_reduce


def test_after_a_halving_the_rank_with_the_short_last_batch_makes_as_many_collective_calls():
    """2 gloo ranks, micro-batches in 4 pieces: rank 1's last micro-batch holds 3 examples, so it runs an empty
    piece first; both ranks agree as often, the gradients are averaged, and neither hangs."""
    run_ranks(_short_last_batch_after_halving, timeout=90)
