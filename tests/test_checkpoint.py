"""Checkpoints and resume: atomic writes, corrupt files skipped, SIGKILL and SIGTERM mid-epoch
on a real 2-process torchrun job, and a resumed run ending bit-for-bit where an
uninterrupted one does."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from kftune.errors import ConfigError
from kftune.training.checkpoint import (
    STATE_FILE,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)
from kftune.training.config import TrainConfig
from kftune.training.launch import torchrun_command
from kftune.training.loop import train


def test_save_and_load_latest(tmp_path):
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((3,), float(step))}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000015", "checkpoint-00000010"]
    path, state = latest_checkpoint(tmp_path)
    assert state["step"] == 15 and torch.equal(state["w"], torch.full((3,), 15.0))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_truncated_or_corrupt_checkpoint_is_skipped(tmp_path, caplog):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.randn(1000)})
    newest, middle = list_checkpoints(tmp_path)[:2]
    data = (newest / STATE_FILE).read_bytes()
    (newest / STATE_FILE).write_bytes(data[: len(data) // 2])  # truncated
    flipped = bytearray((middle / STATE_FILE).read_bytes())
    flipped[-20] ^= 0xFF
    (middle / STATE_FILE).write_bytes(bytes(flipped))  # same size, corrupted
    assert "truncated" in verify_checkpoint(newest)
    assert "SHA-256" in verify_checkpoint(middle)
    with caplog.at_level(logging.WARNING, logger="kftune.train"):
        path, state = latest_checkpoint(tmp_path)
    assert state["step"] == 10
    assert "checkpoint-00000030" in caplog.text and "checkpoint-00000020" in caplog.text


def test_unfinished_write_is_invisible(tmp_path):
    save_checkpoint(tmp_path, 10, {"step": 10})
    (tmp_path / ".tmp-checkpoint-00000020-abcd").mkdir()  # a writer killed mid-way
    (tmp_path / "checkpoint-00000030").mkdir()  # no manifest: not valid
    assert latest_checkpoint(tmp_path)[1]["step"] == 10


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_resume_after_truncated_checkpoint_equals_uninterrupted_run(tmp_path, prepared, tiny_model, caplog):
    """In one process: resume from the last valid checkpoint after the newest one was truncated."""
    config = TrainConfig(model=str(tiny_model), num_train_epochs=2, per_device_train_batch_size=16,
                         learning_rate=1e-3, save_steps=5, save_total_limit=0, early_stopping_patience=0,
                         checkpoint_dir=str(tmp_path / "ckpt"))
    train(config, prepared, tmp_path / "full")
    reference = _weights(tmp_path / "full")
    # 239 examples / 16 = 15 steps per epoch; pretend the job died while step 25's checkpoint was written
    for path in list_checkpoints(tmp_path / "ckpt"):
        if checkpoint_step(path) > 25:
            shutil.rmtree(path)
    state_file = tmp_path / "ckpt" / "checkpoint-00000025" / STATE_FILE
    state_file.write_bytes(state_file.read_bytes()[:1000])
    with caplog.at_level(logging.INFO, logger="kftune.train"):
        train(config, prepared, tmp_path / "resumed")
    assert "skipping checkpoint" in caplog.text and "checkpoint-00000025" in caplog.text
    assert re.search(r"resumed from \S*checkpoint-00000020: step 20, epoch 2, 5 micro-batches", caplog.text)
    _assert_same_weights(reference, _weights(tmp_path / "resumed"))


def test_checkpoint_of_another_config_is_refused(tmp_path, prepared, tiny_model):
    config = TrainConfig(model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=16, max_steps=3,
                         checkpoint_dir=str(tmp_path / "ckpt"))
    train(config, prepared, tmp_path / "a")
    with pytest.raises(ConfigError, match="differs in learning_rate"):
        train(replace(config, learning_rate=3e-4), prepared, tmp_path / "b")
    # options that do not change the optimisation may differ
    train(replace(config, logging_steps=7), prepared, tmp_path / "c")


# --- a real 2-process torchrun job, killed and restarted ------------------------------------------

# 239 training examples in 60 batches of 4, 2 ranks: 30 optimizer steps per epoch, 90 in all
STEPS_PER_EPOCH = 30


def _config(tiny_model, checkpoint_dir: Path) -> TrainConfig:
    return TrainConfig(model=str(tiny_model), num_train_epochs=3, per_device_train_batch_size=4,
                       learning_rate=1e-3, save_steps=10, save_total_limit=0,
                       early_stopping_patience=0, logging_steps=10, checkpoint_dir=str(checkpoint_dir))


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(config: TrainConfig, prepared: Path, out: Path, work: Path) -> list[str]:
    work.mkdir(parents=True, exist_ok=True)
    config.to_json(work / "config.json")
    return torchrun_command(2, work / "config.json", prepared, out)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"training ended (code {process.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, prepared, tiny_model) -> Path:
    """The same 2-process job run to the end without interruption."""
    root = tmp_path_factory.mktemp("uninterrupted")
    config = _config(tiny_model, root / "ckpt")
    subprocess.run(_torchrun(config, prepared, root / "model", root), env=_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return root


def _last_checkpoint_model(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    return latest_checkpoint(checkpoint_dir)[1]["model"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path, prepared, tiny_model, uninterrupted):
    config = _config(tiny_model, tmp_path / "ckpt")
    command = _torchrun(config, prepared, tmp_path / "model", tmp_path)
    # checkpoint 40 is 10 steps into epoch 2; kill the whole job there: the torchrun agent and
    # both workers (torchrun starts each worker in a session of its own)
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(tmp_path / "ckpt" / "checkpoint-00000040", process)
    finally:
        job = [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]
        for pid in job:
            os.kill(pid, signal.SIGKILL)
        process.wait()
        psutil.wait_procs([psutil.Process(pid) for pid in job if psutil.pid_exists(pid)], timeout=10)
    assert not (tmp_path / "model").exists()
    newest = latest_checkpoint(tmp_path / "ckpt")[1]
    assert newest["step"] % STEPS_PER_EPOCH != 0 and newest["micro"] > 0, "not killed mid-epoch"

    rerun = subprocess.run(command, env=_env(), capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    resumed = re.search(r"resumed from \S+: step (\d+)", rerun.stdout)
    assert resumed and int(resumed.group(1)) == newest["step"]
    # bit-for-bit: the best model written and the final weights of the last epoch
    _assert_same_weights(_weights(uninterrupted / "model"), _weights(tmp_path / "model"))
    _assert_same_weights(_last_checkpoint_model(uninterrupted / "ckpt"), _last_checkpoint_model(tmp_path / "ckpt"))


LAUNCH = """
import logging, sys
from kftune.errors import KftuneError
from kftune.training.config import Launch, TrainConfig
from kftune.training.launch import launch_training
logging.basicConfig(level=logging.INFO)
try:
    launch_training(TrainConfig.from_json(sys.argv[1]), sys.argv[2], sys.argv[3], Launch(nproc_per_node=2))
except KftuneError as err:
    print(f"kftune: error: {err}", file=sys.stderr)
    sys.exit(1)
"""


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path, prepared, tiny_model, uninterrupted):
    """SIGTERM to the component process (as Kubernetes does on preemption) reaches torchrun and the workers."""
    config = _config(tiny_model, tmp_path / "ckpt")
    config.to_json(tmp_path / "config.json")
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(tmp_path / "config.json"), str(prepared), str(tmp_path / "model")],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _wait_for(tmp_path / "ckpt" / "checkpoint-00000010", process)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, output[-3000:]
    stopped = re.search(r"SIGTERM: stopped at step (\d+) after writing (\S+);", output)
    assert stopped, output[-3000:]
    step, written = int(stopped.group(1)), Path(stopped.group(2))
    assert "kftune: error: training was stopped by SIGTERM" in output
    # the workers exit without a traceback (torchrun's agent prints its own SignalException)
    assert "[rank0]: Traceback" not in output and "[rank1]: Traceback" not in output
    assert written == tmp_path / "ckpt" / f"checkpoint-{step:08d}" and verify_checkpoint(written) is None
    path, state = latest_checkpoint(tmp_path / "ckpt")
    assert path == written and state["step"] == step and step < 3 * STEPS_PER_EPOCH
    assert len(state["rng"]) == 2  # both ranks' generators
    assert not (tmp_path / "model").exists()

    # the retry resumes from it and still ends where the uninterrupted run did
    subprocess.run(_torchrun(config, prepared, tmp_path / "model", tmp_path), env=_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _assert_same_weights(_weights(uninterrupted / "model"), _weights(tmp_path / "model"))


def test_a_resume_restores_this_gpus_generator_whatever_gpus_saved_theirs():
    """A rank saves its own GPU's CUDA generator state only, and a resume puts it on the rank's GPU; a checkpoint
    that saved every GPU's (an older kftune's) gives a GPU its entry, and a GPU past its list keeps its seed (where
    restoring every saved state failed with IndexError on a machine with fewer GPUs)."""
    from kftune.training.rng import cuda_rng_state

    own = torch.arange(16, dtype=torch.uint8)
    assert cuda_rng_state({"cuda": own}, device_index=3) is own
    every_gpu = [torch.full((16,), gpu, dtype=torch.uint8) for gpu in range(2)]
    assert cuda_rng_state({"cuda": every_gpu}, device_index=1) is every_gpu[1]
    assert cuda_rng_state({"cuda": every_gpu}, device_index=2) is None
    assert cuda_rng_state({}, device_index=0) is None  # saved on CPUs


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without a GPU does with a GPU's state")
def test_a_cpu_run_resumes_from_generator_states_saved_on_gpus():
    from kftune.training.rng import rng_state, set_rng_state

    state = rng_state()
    assert "cuda" not in state
    expected = torch.rand(3)
    set_rng_state({**state, "cuda": torch.zeros(16, dtype=torch.uint8)})
    assert torch.equal(torch.rand(3), expected)


def _mapped_file(tensor: torch.Tensor) -> str | None:
    """What /proc/self/maps says holds ``tensor``'s memory: a file's path, ``[heap]``, or None (anonymous)."""
    address = tensor.untyped_storage().data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) == 6 else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_a_resume_maps_the_checkpoint_file_instead_of_reading_it_into_memory(tmp_path):
    """Every rank loads the checkpoint it resumes from: mapped, the ranks of a node share its pages."""
    state = {"model": {"w": torch.arange(4096.0)}, "optimizer": {"state": {0: {"exp_avg": torch.ones(4096)}}}}
    path = save_checkpoint(tmp_path, 7, state)
    found, loaded = latest_checkpoint(tmp_path)
    assert found == path
    assert _mapped_file(loaded["model"]["w"]) == str(path / STATE_FILE)
    assert _mapped_file(loaded["optimizer"]["state"][0]["exp_avg"]) == str(path / STATE_FILE)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    read = torch.load(path / STATE_FILE, weights_only=True)["model"]["w"]  # read into memory: not the file
    assert _mapped_file(read) != str(path / STATE_FILE)
    loaded["model"]["w"].add_(1)  # a private mapping: the file keeps what was saved
    assert verify_checkpoint(path) is None


def test_a_volume_that_cannot_map_files_still_resumes(tmp_path, monkeypatch, caplog):
    """mmap refused by the filesystem (as some network volumes do): the file is read into memory instead of the
    checkpoint being skipped as unloadable."""
    state = {"model": {"w": torch.arange(16.0)}}
    path = save_checkpoint(tmp_path, 3, state)
    real_load = torch.load

    def load(*args, mmap=None, **kwargs):
        if mmap:
            raise OSError(19, "No such device")  # ENODEV: what mmap(2) gives on a filesystem without it
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    found, loaded = latest_checkpoint(tmp_path)
    assert found == path and torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert "cannot be memory-mapped" in caplog.text
