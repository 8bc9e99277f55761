"""Training progress as compact machine-readable lines, for a console that draws a progress bar.

A local run's training loop is three processes away from the terminal (the CLI, the kfp.local
task, torchrun's worker) and kfp.local hands its output over as text lines, so progress travels
as lines too: ``kftune-progress {json}`` on stdout, written by rank 0. ``kftune run`` sets
``KFTUNE_PROGRESS`` (the least seconds between two step lines) and draws the bar from them; with
it unset (a cluster, a test) nothing is written. Records:

- ``{"kind": "start", "step": 0, "total_steps": 80}`` as training starts (``step`` > 0 on resume),
- ``{"kind": "step", "step": 12, "total_steps": 80, "loss": 0.61, "samples_per_second": 41.2}``,
- ``{"kind": "epoch", "epoch": 1, "metric": "f1_macro", "score": 0.83}`` after each validation.
"""

from __future__ import annotations

import json
import os
import sys
import time

PROGRESS_MARKER = "kftune-progress "
PROGRESS_ENV = "KFTUNE_PROGRESS"


class ProgressLine:
    """Writes the progress records of one training run (silent unless ``KFTUNE_PROGRESS`` is set)."""

    def __init__(self, total_steps: int, enabled: bool = True):
        setting = os.environ.get(PROGRESS_ENV, "")
        self.enabled = enabled and setting != ""
        self.interval = float(setting) if self.enabled else 0.0
        self.total_steps = total_steps
        self._last = float("-inf")

    def start(self, step: int) -> None:
        self._write({"kind": "start", "step": step, "total_steps": self.total_steps})

    def step(self, step: int, loss: float, samples_per_second: float) -> None:
        """Report an optimizer step; written at most every ``interval`` seconds, and always for the last one."""
        now = time.monotonic()
        if now - self._last < self.interval and step < self.total_steps:
            return
        self._last = now
        self._write({"kind": "step", "step": step, "total_steps": self.total_steps, "loss": round(loss, 4),
                     "samples_per_second": round(samples_per_second, 2)})

    def epoch(self, epoch: int, metric: str, score: float) -> None:
        self._write({"kind": "epoch", "epoch": epoch, "metric": metric, "score": round(score, 4)})

    def _write(self, record: dict) -> None:
        if self.enabled:
            print(PROGRESS_MARKER + json.dumps(record), file=sys.stdout, flush=True)


def parse_progress(line: str) -> dict | None:
    """The record in a progress line (anything may precede the marker: an indent, a rank prefix), else None."""
    at = line.find(PROGRESS_MARKER)
    if at < 0:
        return None
    try:
        record = json.loads(line[at + len(PROGRESS_MARKER):])
    except ValueError:
        return None
    return record if isinstance(record, dict) and "kind" in record else None
