"""Launch the training loop under torchrun from inside the train component.

One process per visible GPU (NCCL), or N CPU processes (gloo) sharing the cores. The
component calls :func:`launch_training`; torchrun runs :mod:`kftune.components.train.loop`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kftune.components.common.errors import ConfigError, KftuneError
from kftune.components.train.config import TrainConfig
from kftune.components.train.loop import HISTORY_FILE

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity / cgroup cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


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


def torchrun_command(nproc: int, config_file: Path, dataset_dir: Path, output_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", f"--nproc_per_node={nproc}",
        "-m", "kftune.components.train.loop",
        "--config", str(config_file), "--dataset", str(dataset_dir), "--output", str(output_dir),
    ]


def launch_training(config: TrainConfig, dataset_dir: str | Path, output_dir: str | Path) -> dict:
    """Train with torchrun and return the training history written by rank 0."""
    import torch

    config.validate()
    dataset_dir, output_dir = Path(dataset_dir), Path(output_dir)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    nproc, kind = plan_processes(config.nproc_per_node, gpus)
    env = dict(os.environ)
    if kind == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # torchrun would otherwise pin every worker to one thread.
        env["OMP_NUM_THREADS"] = str(max(1, available_cpus() // nproc))
    with tempfile.TemporaryDirectory(prefix="kftune-train-") as tmp:
        config_file = Path(tmp) / "train_config.json"
        config.to_json(config_file)
        command = torchrun_command(nproc, config_file, dataset_dir, output_dir)
        log.info("launching %d %s process(es): %s", nproc, kind, " ".join(command))
        result = subprocess.run(command, env=env, check=False)
    if result.returncode != 0:
        raise KftuneError(f"training failed: torchrun exited with code {result.returncode} (see the log above)")
    return json.loads((output_dir / HISTORY_FILE).read_text(encoding="utf-8"))
