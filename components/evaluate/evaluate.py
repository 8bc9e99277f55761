"""Score the fine-tuned model on the test split against baselines, and gate it.

The task brings its scores and baselines (:meth:`~kftune.tasks.base.Task.evaluate`): each task's
baselines are fitted on the same train split and scored on the same test split (or, for a causal
LM, are its base model answering the same prompts). ``delta_vs_baseline`` is the gain over the
task's baseline in each score, positive where the model is better (an error's gain is baseline
minus model); the gate ``passed`` holds when the model reaches the given thresholds
(:meth:`~kftune.tasks.base.Task.checks`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from kftune.components.evaluate.config import EvaluateConfig
from kftune.tasks import resolve_task, task_named

log = logging.getLogger(__name__)


def evaluate(model_dir: str | Path, dataset_dir: str | Path, test_dir: str | Path, config: EvaluateConfig) -> dict:
    """Score the model and the baselines on the test split and gate the model; return the full result.

    ``dataset_dir`` is preprocess's dataset artifact (the task, and the train split the baselines fit on),
    ``test_dir`` its test split artifact: the one stage before export that reads it.
    """
    config = resolve_task(config, dataset_dir)
    config.validate()
    task = task_named(config.task)
    result = task.evaluate(Path(model_dir), Path(dataset_dir), Path(test_dir), config)
    result["checks"] = task.checks(result, config)
    result["passed"] = all(result["checks"].values())
    model, baseline = result["model"], result["baselines"][result["baseline"]]
    keys = task.result_metrics(result)
    log.info("test %s; %s %s; gate %s", " ".join(f"{k} {model[k]:.4f}" for k in keys), result["baseline"],
             " ".join(f"{k} {baseline[k]:.4f}" for k in keys if k in baseline),
             "passed" if result["passed"] else "failed")
    return result


def flat_metrics(result: dict) -> dict[str, float]:
    """Scalars for a KFP ``Metrics`` artifact: model, baselines, deltas, gate."""
    return task_named(result["task"]).flat_metrics(result)
