"""The run's history (``training_history.json``) and what the loop reports as it goes.

Rank 0 records a step every ``logging_steps`` optimizer steps (mean training loss of the epoch so far, learning
rate, samples per second since the last record) and every epoch (training loss, throughput, validation scores),
logs a line for each, and writes ``kftune run``'s progress records (:class:`~kftune.training.progress.ProgressLine`).
Every rank counts its losses and examples (throughput counts all ranks' examples: each rank's times the world).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from kftune.training.distributed import Ranks
from kftune.training.monitors import memory_mb
from kftune.training.progress import ProgressLine
from kftune.training.state import BestModel, MicroBatching, Records
from kftune.training.validation import EpochScores

log = logging.getLogger("kftune.train")


class TrainingLog:
    """Keeps ``records`` (the history and the epoch's running loss) and reports progress (module docstring)."""

    def __init__(self, records: Records, total_steps: int, logging_steps: int, ranks: Ranks, monitors: list = ()):
        self.records, self.total_steps, self.logging_steps = records, total_steps, logging_steps
        self.world, self.is_main, self.device = ranks.world, ranks.is_main, ranks.device
        self.monitors = list(monitors)  # TensorBoard, MLflow (kftune.training.monitors): rank 0's only
        self.last_step = 0
        self.line = ProgressLine(total_steps, enabled=ranks.is_main)  # for kftune run's progress bar
        self.run_start = self.epoch_start = self.window_start = time.perf_counter()
        self.window_samples = self.epoch_samples = self.epoch_tokens = 0

    def start(self, step: int) -> None:
        """Training starts (or resumes) after ``step`` optimizer steps."""
        self.line.start(step)
        self.run_start = time.perf_counter()

    def start_epoch(self, resumed_mid_epoch: bool) -> None:
        if not resumed_mid_epoch:
            self.records.loss_sum, self.records.loss_count = 0.0, 0
        self.epoch_start = self.window_start = time.perf_counter()
        self.window_samples = self.epoch_samples = self.epoch_tokens = 0

    def micro_batches(self, losses: list[float], batches: list[np.ndarray], lengths: np.ndarray) -> None:
        """Count one optimizer step's micro-batches (example indices ``batches``, their ``losses``)."""
        for loss, indices in zip(losses, batches, strict=True):
            self.records.loss_sum += loss
            self.records.loss_count += 1
            self.window_samples += len(indices) * self.world
            self.epoch_samples += len(indices) * self.world
            self.epoch_tokens += int(lengths[indices].sum()) * self.world

    def step(self, step: int, epoch: int, fraction: float, learning_rate: float) -> None:
        """Optimizer step ``step`` is done, ``fraction`` of the way through epoch ``epoch`` (0-based)."""
        loss = self.records.loss_sum / self.records.loss_count
        self.line.step(step, loss, self.epoch_samples / (time.perf_counter() - self.epoch_start))
        if not self.is_main or (step % self.logging_steps and step != self.total_steps):
            return
        elapsed = time.perf_counter() - self.window_start
        rate = self.window_samples / elapsed if elapsed else float("nan")
        self.records.history["steps"].append({"step": step, "epoch": epoch + fraction, "loss": loss,
                                              "learning_rate": learning_rate, "samples_per_second": rate})
        log.info("epoch %d step %d/%d loss %.4f lr %.2e %.1f samples/s", epoch + 1, step, self.total_steps, loss,
                 learning_rate, rate)
        self.last_step = step
        shown = {"loss": loss, "learning_rate": learning_rate, "samples_per_second": rate,
                 "memory_mb": memory_mb(self.device)}
        for monitor in self.monitors:
            monitor.step(step, shown)
        self.window_start, self.window_samples = time.perf_counter(), 0

    def epoch_seconds(self) -> float:
        """Seconds of training in this epoch so far."""
        return time.perf_counter() - self.epoch_start

    def epoch(self, epoch: int, seconds: float, validated: EpochScores, metric: str) -> None:
        """Record epoch ``epoch`` (0-based): ``seconds`` of training, then ``validated`` (rank 0 only)."""
        scores = validated.scores
        record = {
            "epoch": epoch + 1,
            "train_loss": self.records.loss_sum / max(1, self.records.loss_count),
            "train_samples_per_second": self.epoch_samples / seconds,
            "train_tokens_per_second": self.epoch_tokens / seconds,
            "epoch_seconds": seconds,
            **{f"val_{k}": v for k, v in scores.items()},
        }
        self.records.history["epochs"].append(record)
        log.info("epoch %d done in %.1fs (%.1f samples/s): val %s%s", epoch + 1, seconds,
                 record["train_samples_per_second"], " ".join(f"{k} {v:.4f}" for k, v in scores.items()),
                 " (best)" if validated.improved else "")
        self.line.epoch(epoch + 1, metric, scores[metric])
        for monitor in self.monitors:
            monitor.epoch(self.last_step, {k: v for k, v in record.items() if k != "epoch"})

    def finish(self, best: BestModel, micro_batching: MicroBatching, metric: str, precision: str,
               training_mode: str) -> dict:
        """The history as training ends: the best epoch, and how the run went."""
        history = self.records.history
        if micro_batching.changes:
            history["micro_batch_changes"] = micro_batching.changes
        if best.pruned_at_epoch:
            history["pruned_at_epoch"] = best.pruned_at_epoch
        history.update(best_epoch=best.epoch + 1, best_metric=metric, best_score=best.score,
                       train_seconds=time.perf_counter() - self.run_start, precision=precision,
                       training_mode=training_mode)
        for monitor in self.monitors:
            monitor.finish(history)
        return history
