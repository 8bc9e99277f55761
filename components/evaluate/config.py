"""The evaluation gate: what the fine-tuned model must reach on the test split to be published and deployed."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from kftune.errors import ConfigError
from kftune.settings.fields import check_settings, internal, setting
from kftune.settings.groups import GenerationBudget
from kftune.tasks import TASKS, TaskChoice, check_task_settings, task_groups


@dataclass
class EvaluateConfig(*task_groups("evaluate"), GenerationBudget, TaskChoice):
    """Thresholds of the gate, inference settings (the generation budget: :class:`GenerationBudget`, which predict
    shares) and the tasks' own evaluation settings (a causal LM's base-model baselines)."""

    min_primary_score: float = setting(-1.0, ge=0, le=1, auto=True)
    """Gate: the model's test score in the task's primary metric must be at least this (where the primary metric is a score, not an error such as RMSE); -1: the task's."""  # noqa: E501
    max_primary_error: float = setting(-1.0, ge=0, auto=True)
    """Gate: the model's test error in the task's primary metric must be at most this (where the primary metric is an error, such as RMSE, in the target's units); -1: no limit."""  # noqa: E501
    min_f1_macro: float = setting(0.0, ge=0, le=1)
    """Gate: the model's test macro F1 must be at least this (tasks that score macro F1)."""
    min_gain_over_baseline: float = setting(0.0, per_task="primary")
    """Gate: the model's gain over the task's baseline in its primary metric must be at least this (for an error, baseline minus model, in the target's units); within [-1, 1] where the primary metric is a score. The primary metrics."""  # noqa: E501
    max_loss_to_trivial: float = setting(0.01, ge=0, auto=-1)
    """Gate: the model must not be worse than the task's trivial answer (classification: the most frequent class; regression: the training mean; multilabel: the most frequent label set; token-classification: each word's most frequent tag) on any test score that answer has, by more than this (in the score's units: 0.01 is one point of a score in [0, 1]; for regression's errors, the target's units): a model that collapsed to one class, or to every label, fails with a line naming the score; -1: no such check."""  # noqa: E501
    gain_at_lower_bound: bool = setting(False)
    """Gate: hold the lower bound of the gain's 95% interval (paired bootstrap over the test examples), not its point estimate, to min_gain_over_baseline: a gain that may be noise fails."""  # noqa: E501
    max_regression: float = setting(0.01, ge=0)
    """Promotion: a model that passes the gate replaces the registered champion (the version deploy serves) only if the lower bound of the 95% interval of its gain over the champion in the primary metric, both scored on this test split (paired bootstrap), is at least -this (0: not worse at all; 0.01: one point of a score; for an error such as RMSE, in the target's units); else it is registered as challenger and the champion stays."""  # noqa: E501
    batch_size: int = internal(128, ge=1)

    def validate(self) -> None:
        """Reject values outside their ranges, and a gain the task's primary metric cannot have."""
        check_settings(self)
        check_task_settings(self)
        if not math.isfinite(self.min_gain_over_baseline):
            raise ConfigError(f"min_gain_over_baseline must be a finite number, got {self.min_gain_over_baseline}")
        task = TASKS.get(self.task)  # auto: known once the data says which task it is
        if task:
            self.check_gates(task)
        if task and self.gain_at_lower_bound and not task.intervals:
            # every kftune task has them; a task from outside kftune may not implement example_statistics
            raise ConfigError(f"gain_at_lower_bound: task {task.name} gives no intervals of its gains (its "
                              "intervals is False); leave it off")
        if task and task.higher_is_better(task.primary) and not -1 <= self.min_gain_over_baseline <= 1:
            # a score in [0, 1] gains at most 1; an error (RMSE) gains in the target's own units
            raise ConfigError(f"min_gain_over_baseline must be in [-1, 1] (a gain in {task.primary}, a score), got "
                              f"{self.min_gain_over_baseline}")

    def check_gates(self, task) -> None:
        """Refuse a gate setting the task has no score for (an F1 threshold for regression), set away from its
        defaults: the gate would silently ignore it."""
        gates = task.gates()
        for name in GATE_SETTINGS:
            value = getattr(self, name)
            if name not in gates and value not in (DEFAULTS[name], task.defaults.get(name, DEFAULTS[name])):
                raise ConfigError(f"{name} does not apply to task {task.name} (its gate settings: "
                                  f"{', '.join(gates)}); leave it at its default")


GATE_SETTINGS = ("min_primary_score", "max_primary_error", "min_f1_macro", "min_gain_over_baseline",
                 "max_loss_to_trivial")
"""The thresholds of the gate; :meth:`~kftune.tasks.base.Task.gates` says which apply to a task."""
DEFAULTS = {f.name: f.default for f in fields(EvaluateConfig)}
