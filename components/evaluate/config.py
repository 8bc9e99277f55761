"""The evaluation gate: what the fine-tuned model must reach on the test split to be published and deployed."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kftune.errors import ConfigError
from kftune.settings.fields import internal, per_task
from kftune.settings.groups import GenerationBudget
from kftune.tasks import TASKS, TaskChoice


@dataclass
class EvaluateConfig(GenerationBudget, TaskChoice):
    """Thresholds of the gate, and inference settings (the generation budget: :class:`GenerationBudget`, which
    predict shares)."""

    min_primary_score: float = -1.0
    """Gate: the model's test score in the task's primary metric must be at least this (where the primary metric is a score, not an error such as RMSE); -1: the task's."""  # noqa: E501
    min_f1_macro: float = 0.0
    """Gate: the model's test macro F1 must be at least this."""
    min_gain_over_baseline: float = per_task(0.0, "primary")
    """Gate: the model's gain over the task's baseline in its primary metric must be at least this (for an error, baseline minus model, in the target's units); within [-1, 1] where the primary metric is a score. The primary metrics."""  # noqa: E501
    batch_size: int = internal(128)

    def validate(self) -> None:
        for name in ("min_primary_score", "min_f1_macro"):
            if name == "min_primary_score" and self.task == "auto" and self.min_primary_score == -1:
                continue  # the task's, once the data says which task it is
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not math.isfinite(self.min_gain_over_baseline):
            raise ConfigError(f"min_gain_over_baseline must be a finite number, got {self.min_gain_over_baseline}")
        task = TASKS.get(self.task)  # auto: known once the data says which task it is
        if task and task.higher_is_better(task.primary) and not -1 <= self.min_gain_over_baseline <= 1:
            # a score in [0, 1] gains at most 1; an error (RMSE) gains in the target's own units
            raise ConfigError(f"min_gain_over_baseline must be in [-1, 1] (a gain in {task.primary}, a score), got "
                              f"{self.min_gain_over_baseline}")
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0 (0: from the data), got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
