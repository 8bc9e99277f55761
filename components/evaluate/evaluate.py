"""Score the fine-tuned model on the test split against baselines, and gate it.

The task brings its scores and baselines (:meth:`~kftune.tasks.base.Task.evaluate`): each task's
baselines are fitted on the same train split and scored on the same test split (or, for a causal
LM, are its base model answering the same prompts). ``delta_vs_baseline`` is the gain over the
task's baseline in each score, positive where the model is better (an error's gain is baseline
minus model); the gate ``passed`` holds when the model reaches the given thresholds
(:meth:`~kftune.tasks.base.Task.checks`). Where the registry holds a champion, it is scored on the same
test split and ``promotion`` says whether the model may replace it (:mod:`kftune.tracking.champion`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from kftune.components.evaluate.config import EvaluateConfig
from kftune.tasks import resolve_task, task_named
from kftune.tracking.champion import champion_metrics, fetch_champion, promotion
from kftune.tracking.registry import RegistryConfig
from kftune.tracking.tracker import TRACKING_FILE

log = logging.getLogger(__name__)


def evaluate(model_dir: str | Path, dataset_dir: str | Path, test_dir: str | Path, config: EvaluateConfig,
             registry: RegistryConfig | None = None) -> dict:
    """Score the model and the baselines (and the registry's champion, where there is one) on the test split, gate
    the model and decide its promotion; return the full result.

    ``dataset_dir`` is preprocess's dataset artifact (the task, and the train split the baselines fit on),
    ``test_dir`` its test split artifact: the one stage before export that reads it.
    """
    config = resolve_task(config, dataset_dir)
    config.validate()
    registry = registry or RegistryConfig()
    task = task_named(config.task)
    with tempfile.TemporaryDirectory(prefix="kftune-champion-") as downloads:
        champion = fetch_champion(model_dir, registry, task.name, downloads)
        champion_dir = Path(champion["dir"]) if champion and "dir" in champion else None
        result = task.evaluate(Path(model_dir), Path(dataset_dir), Path(test_dir), config, champion_dir=champion_dir)
    if champion is not None:
        compared = result.get("champion") or {"error": f"task {task.name} does not score a champion yet"}
        result["champion"] = {k: v for k, v in champion.items() if k != "dir"} | (compared if champion_dir else {})
    result["checks"] = task.checks(result, config)
    result["passed"] = all(result["checks"].values())
    result["promotion"] = promotion(result, result.get("champion"), registry,
                                    (Path(model_dir) / TRACKING_FILE).is_file(), config.max_regression)
    model, baseline = result["model"], result["baselines"][result["baseline"]]
    keys = task.result_metrics(result)
    log.info("test %s; %s %s; gate %s", " ".join(f"{k} {model[k]:.4f}" for k in keys), result["baseline"],
             " ".join(f"{k} {baseline[k]:.4f}" for k in keys if k in baseline),
             "passed" if result["passed"] else "failed")
    log.info("promotion: %s", result["promotion"]["reason"])
    return result


def flat_metrics(result: dict) -> dict[str, float]:
    """Scalars for a KFP ``Metrics`` artifact: model, baselines, deltas, gate, the champion and the promotion."""
    return task_named(result["task"]).flat_metrics(result) | champion_metrics(result)
