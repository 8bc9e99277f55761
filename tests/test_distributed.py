"""The processes of a training job (kftune.training.distributed): the process group's options, leaving it on
success and on an error, the CUDA allocator's settings; and what 2 gloo processes must do together: as many
collective calls on every rank after a halving, FSDP shards that are never whole on one rank."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist

from kftune.training import distributed
from kftune.training.config import TrainConfig
from kftune.training.distributed import COLLECTIVE_TIMEOUT, Ranks, process_group_options, use_expandable_segments


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
