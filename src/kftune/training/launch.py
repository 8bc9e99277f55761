"""Launch the training loop under torchrun from inside the train component.

One process per visible GPU (NCCL), or N CPU processes (gloo) sharing the cores. The
component calls :func:`launch_training`; torchrun runs :mod:`kftune.training.loop`
(a single process that torchrun would not restart runs it directly).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from kftune.cpus import available_cpus
from kftune.errors import ConfigError, KftuneError
from kftune.storage.atomic import refuse_existing_artifact
from kftune.training.config import Launch, TrainConfig
from kftune.training.distributed import refuse_training_on_cpu_with_gpus_given
from kftune.training.loop import HISTORY_FILE, default_checkpoint_dir
from kftune.training.precision import resolve_precision

log = logging.getLogger(__name__)


def plan_processes(requested: int, gpus: int) -> tuple[int, str]:
    """How many processes to start and on what: (nproc, "cuda"|"cpu").

    ``requested == 0`` means one per GPU, or a single process on CPU (measured on a 2-core
    machine: one process with 2 threads trains faster than 2 gloo processes x 1 thread).
    More processes than GPUs is rejected before anything starts.
    """
    if gpus:
        nproc = requested or gpus
        if nproc > gpus:
            raise ConfigError(f"nproc_per_node={nproc} but only {gpus} GPU(s) are visible")
        return nproc, "cuda"
    return requested or 1, "cpu"


def torchrun_command(
    nproc: int, config_file: Path, dataset_dir: Path, output_dir: Path, max_restarts: int = 0
) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        # One node: the workers meet on loopback, not on the host name, which need not resolve
        # (a container without a network, a pod whose hostname has no DNS entry yet).
        "--standalone", "--local-addr=127.0.0.1", f"--nproc_per_node={nproc}", f"--max-restarts={max_restarts}",
        "-m", "kftune.training.loop",
        "--config", str(config_file), "--dataset", str(dataset_dir), "--output", str(output_dir),
    ]


def training_command(
    nproc: int, config_file: Path, dataset_dir: Path, output_dir: Path, max_restarts: int = 0
) -> list[str]:
    """torchrun's command, or for one process that torchrun would not restart the loop's own: torchrun's agent
    adds ~3 s of start-up, and a world of one rank gains nothing from DDP (its gradients are the same)."""
    if nproc == 1 and max_restarts == 0:
        return [sys.executable, "-m", "kftune.training.loop",
                "--config", str(config_file), "--dataset", str(dataset_dir), "--output", str(output_dir)]
    return torchrun_command(nproc, config_file, dataset_dir, output_dir, max_restarts)


def launch_training(
    config: TrainConfig, dataset_dir: str | Path, output_dir: str | Path, launch: Launch | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """Train with torchrun (processes per ``launch``) and return the training history written by rank 0; ``env``
    adds to the workers' environment (the MLflow run they record into)."""
    import torch

    from kftune.tasks import resolve_task

    config = resolve_task(config, dataset_dir)
    config.validate()
    launch = launch or Launch()
    launch.validate()
    dataset_dir, output_dir = Path(dataset_dir), Path(output_dir)
    refuse_existing_artifact(output_dir)  # now, not after the whole run when the model is written
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    refuse_training_on_cpu_with_gpus_given(os.environ, torch.__version__, torch.version.cuda or torch.version.hip,
                                           gpus)
    nproc, kind = plan_processes(launch.nproc_per_node, gpus)
    resolve_precision(config.mixed_precision, torch.device(kind))  # fp16 without a GPU fails here, not in torchrun
    env = dict(os.environ) | (env or {})
    if kind == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # torchrun would otherwise pin every worker to one thread.
        env["OMP_NUM_THREADS"] = str(max(1, available_cpus() // nproc))
    config_checkpoint_dir_given = bool(config.checkpoint_dir)
    checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else default_checkpoint_dir(output_dir)
    config = replace(config, checkpoint_dir=str(checkpoint_dir))
    with tempfile.TemporaryDirectory(prefix="kftune-train-") as tmp:
        config_file = Path(tmp) / "train_config.json"
        config.to_json(config_file)
        command = training_command(nproc, config_file, dataset_dir, output_dir, launch.max_restarts)
        under_torchrun = "torch.distributed.run" in command
        if not under_torchrun:  # one process, on its own: not a rank of an outer job
            for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(name, None)
        log.info("launching %d %s process(es), checkpoints in %s: %s", nproc, kind, checkpoint_dir, " ".join(command))
        returncode, terminated = run_forwarding_sigterm(command, env)
    if terminated:
        raise KftuneError(
            f"training was stopped by SIGTERM; its checkpoint is in {checkpoint_dir} and a retry resumes from it"
        )
    if returncode != 0:
        launcher = "torchrun" if under_torchrun else "the training process"
        raise KftuneError(f"training failed: {launcher} exited with code {returncode} (see the log above)")
    if not config_checkpoint_dir_given:
        # beside the model, inside this pod or local run: of no use once the model is written
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return json.loads((output_dir / HISTORY_FILE).read_text(encoding="utf-8"))


def run_forwarding_sigterm(command: list[str], env: dict) -> tuple[int, bool]:
    """Run ``command``, passing a SIGTERM sent to this process on to it (torchrun then stops its
    workers, which checkpoint first). Returns (exit code, whether SIGTERM arrived)."""
    process = subprocess.Popen(command, env=env)
    terminated = []

    def forward(signum, frame):
        terminated.append(signum)
        process.send_signal(signal.SIGTERM)

    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there
    previous = signal.signal(signal.SIGTERM, forward) if in_main_thread else None
    try:
        returncode = process.wait()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return returncode, bool(terminated)


def shared_checkpoint_dir(shared_dir: str, run_id: str) -> str:
    """Checkpoints of pipeline run ``run_id`` on the shared volume, so that a retried or restarted
    train task resumes; "" (beside the model, inside the pod) where no volume is mounted."""
    if not shared_dir:
        return ""
    if not Path(shared_dir).is_dir():
        log.warning("shared volume %s is not mounted here; checkpoints stay inside this pod", shared_dir)
        return ""
    return str(Path(shared_dir) / "checkpoints" / (run_id or "local"))
