"""Search settings: what a hyperparameter search varies, how, and how many trials it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kftune.errors import ConfigError
from kftune.settings.fields import check_settings, setting
from kftune.tasks import AUTO, DEFAULT_TASK, search_direction, task_named

Algorithm = Literal["grid", "random", "tpe", "bayesianoptimization"]
Direction = Literal["auto", "maximize", "minimize"]
PIPELINE_ALGORITHMS = ("grid", "random", "tpe")
"""What the pipeline backend runs (Katib adds bayesianoptimization)."""


@dataclass
class SearchConfig:
    """A hyperparameter search over training settings; each trial is a real training run."""

    search_space: str = setting("", per_task="search_space")
    """JSON: per training option a range {"low", "high", "log", "step", "grid"} or a list of choices; the searchable options are listed in components/tune/README.md (the lora_ ones need training_mode lora); empty: the task's."""  # noqa: E501
    algorithm: Algorithm = "tpe"
    """Search algorithm: grid, random, tpe (Bayesian, Optuna); bayesianoptimization with search_backend katib only."""  # noqa: E501
    search_backend: Literal["pipeline", "katib"] = "pipeline"
    """pipeline: trials as pipeline tasks (grid, random) or one Optuna task (tpe); katib: a Katib Experiment on the cluster."""  # noqa: E501
    max_trials: int = setting(4, ge=1)
    """Trials in all (the default configuration counts when include_defaults)."""
    parallel_trials: int = setting(2, ge=1)
    """Katib trials running at once (the grid/random fan-out's limit is set when compiling)."""
    max_failed_trials: int = setting(2, ge=0)
    """A Katib Experiment fails after this many failed trials."""
    direction: Direction = "auto"
    """Maximize or minimize metric_for_best_model on the validation split; auto: minimize loss and errors (rmse, mae), maximize the others."""  # noqa: E501
    include_defaults: bool = True
    """Make the first trial the configuration the training settings give."""
    prune: bool = True
    """tpe: stop trials whose per-epoch validation score falls below the median of earlier trials."""

    def direction_for(self, metric: str) -> str:
        """The direction of the search on ``metric``: the setting, or (auto) the one that improves it."""
        if self.direction != "auto":
            return self.direction
        return search_direction(metric)

    def space(self, base):
        """The search space of trials based on ``base`` (a TrainConfig): ``search_space``, or its task's (the
        default task's while the task is still ``auto``)."""
        import json

        from kftune.training.search_space import parse_space

        task = task_named(DEFAULT_TASK if base.task == AUTO else base.task)
        return parse_space(self.search_space or json.dumps(task.search_space), base.training_mode)

    def validate(self) -> None:
        """Reject values outside their ranges and an algorithm the backend does not run."""
        check_settings(self)
        if self.search_backend == "pipeline" and self.algorithm not in PIPELINE_ALGORITHMS:
            raise ConfigError(f"algorithm {self.algorithm!r} needs search_backend katib; the pipeline backend runs "
                              f"{', '.join(PIPELINE_ALGORITHMS)}")
