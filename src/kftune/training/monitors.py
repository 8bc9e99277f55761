"""Where the training curves go besides the history: TensorBoard event files and the MLflow run.

The loop's :class:`~kftune.training.history.TrainingLog` hands each logged step, each epoch and the end of
training to every monitor (rank 0 only). :class:`TensorBoard` writes event files that Kubeflow's TensorBoard
viewer (or ``tensorboard --logdir``) reads; :class:`MlflowRun` records into the run a launcher started
(:class:`~kftune.tracking.tracker.Tracker`), with MLflow's system metrics (CPU, memory; GPU where there is one).
"""

from __future__ import annotations

import logging
import resource
import shutil
from pathlib import Path

import torch

log = logging.getLogger("kftune.train")

TENSORBOARD_DIR = "tensorboard"
"""In the model directory: the run's TensorBoard event files."""


def memory_mb(device: torch.device) -> float:
    """Peak memory so far: the GPU's allocated memory on CUDA, else this process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def tensorboard_dir(output_dir: Path) -> Path:
    """Where the event files are written during training (moved into the model directory with it)."""
    return output_dir.with_name(output_dir.name + ".tensorboard")


class TensorBoard:
    """Scalars under train/ (per logged step) and val/ (per epoch), and the settings as hparams at the end."""

    def __init__(self, log_dir: Path, settings: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer, self.settings = SummaryWriter(str(log_dir)), settings

    def step(self, step: int, values: dict) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"train/{name}", value, step)

    def epoch(self, step: int, values: dict) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name.replace("val_", "val/", 1) if name.startswith("val_") else f"epoch/{name}",
                                   value, step)
        self.writer.flush()

    def finish(self, history: dict) -> None:
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in self.settings.items()}
        self.writer.add_hparams(hparams, {f"best/{history['best_metric']}": history["best_score"]}, run_name="hparams")
        self.writer.close()


class MlflowRun:
    """Per-step and per-epoch metrics into the launcher's MLflow run, and system metrics while training."""

    def __init__(self, tracker):
        self.tracker, self.system = tracker, None
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.system = SystemMetricsMonitor(tracker.run_id, sampling_interval=5, tracking_uri=tracker.uri)
            self.system.start()
        except Exception as e:  # noqa: BLE001 -- system metrics are a bonus, never a failure
            log.warning("tracking: no system metrics (%s)", e)
            self.system = None

    def step(self, step: int, values: dict) -> None:
        self.tracker.metrics({f"train_{k}" if k == "loss" else k: v for k, v in values.items()}, step)

    def epoch(self, step: int, values: dict) -> None:
        self.tracker.metrics({k if k.startswith("val_") else f"epoch_{k}": v for k, v in values.items()}, step)

    def finish(self, history: dict) -> None:
        if self.system is not None:
            self.system.finish()
        self.tracker.metrics({"best_epoch": history["best_epoch"], f"best_val_{history['best_metric']}":
                              history["best_score"], "train_seconds": history["train_seconds"]},
                             history["steps"][-1]["step"] if history["steps"] else 0)


def start_monitors(output_dir: Path, settings: dict) -> list:
    """The monitors of rank 0: TensorBoard always, MLflow when a launcher started a run for this training."""
    from kftune.tracking.tracker import Tracker

    monitors: list = [TensorBoard(tensorboard_dir(output_dir), settings)]
    tracker = Tracker.from_env(stage="train-worker")
    if tracker is not None:
        monitors.append(MlflowRun(tracker))
    return monitors


def keep_tensorboard(output_dir: Path, model_dir: Path) -> None:
    """Copy the event files into the model directory being written (``model_dir``, the atomic copy)."""
    source = tensorboard_dir(output_dir)
    if source.is_dir():
        shutil.copytree(source, model_dir / TENSORBOARD_DIR, dirs_exist_ok=True)
