"""The evaluation gate: what the fine-tuned model must reach on the test split to be published and deployed."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kftune.errors import ConfigError
from kftune.settings.fields import GenerationBudget, TaskChoice, internal
from kftune.tasks import TASKS


@dataclass
class EvaluateConfig(GenerationBudget, TaskChoice):
    """Thresholds of the gate, and inference settings (the generation budget: :class:`GenerationBudget`, which
    predict shares)."""

    min_accuracy: float = -1.0
    """Gate: the model's test score in the task's primary metric must be at least this (classification: accuracy; causal-lm: answer accuracy where the answers are a short list, else exact match; multilabel: f1_micro; token-classification: entity F1; not used by regression, whose primary metric is an error, RMSE); -1: the task's (classification: 0.8, causal-lm: 0.0, regression: 0.0, multilabel: 0.0, token-classification: 0.0)."""  # noqa: E501
    min_f1_macro: float = 0.0
    """Gate: the model's test macro F1 must be at least this."""
    min_gain_over_baseline: float = 0.0
    """Gate: the model's gain over the task's TF-IDF baseline in its primary metric (classification: accuracy; regression: RMSE, baseline minus model, in the target's units; multilabel: f1_micro; token-classification: entity F1 over the most-frequent-tag baseline) must be at least this; within [-1, 1] where the primary metric is a score."""  # noqa: E501
    batch_size: int = internal(128)

    def validate(self) -> None:
        for name in ("min_accuracy", "min_f1_macro"):
            if name == "min_accuracy" and self.task == "auto" and self.min_accuracy == -1:
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
