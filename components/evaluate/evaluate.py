"""Score the fine-tuned model on the test split against baselines, and gate it.

Each task brings its scores and baselines (:mod:`kftune.tasks`): for
classification the majority class and TF-IDF + logistic regression (scikit-learn defaults);
regression the training mean and TF-IDF + ridge; multilabel the most frequent label set and
TF-IDF + one-vs-rest logistic regression. Baselines are fitted on the same train split and
scored on the same test split. ``delta_vs_baseline`` is the gain over the task's baseline in
each score, positive where the model is better (an error's gain is baseline minus model); the
gate ``passed`` holds when the model reaches the given thresholds.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from kftune.components.evaluate.config import EvaluateConfig
from kftune.data.schema import LABEL, dataset_task, load_splits
from kftune.errors import KftuneError
from kftune.inference.runners import predict_logits, torch_runner
from kftune.models.encoder import load_classifier
from kftune.tasks import encoder_task, task_named, trained_task_info, with_task
from kftune.tasks.classification import (  # noqa: F401 (re-exported: bench, tests)
    SUMMARY_KEYS,
    classification_scores,
    majority_baseline,
    tfidf_baseline,
)

log = logging.getLogger(__name__)


def evaluate(model_dir: str | Path, dataset_dir: str | Path, config: EvaluateConfig) -> dict:
    """Score the model and the baselines on the test split; return the full result."""
    config = with_task(config, dataset_task(dataset_dir)["task"])
    config.validate()
    if config.task == "causal-lm":
        from kftune.components.evaluate.generation import evaluate_causal_lm

        return evaluate_causal_lm(model_dir, dataset_dir, replace(config, batch_size=min(config.batch_size, 16)))
    task = encoder_task(config.task)
    splits, _ = load_splits(dataset_dir)
    model = load_classifier(model_dir, task)
    info = trained_task_info(model_dir, model, dataset_task(dataset_dir))
    if info["task"] != config.task:
        raise KftuneError(f"{model_dir}: the model was trained for task {info['task']}, the dataset is for "
                          f"{config.task}; evaluate the model on the dataset it was trained on")
    if info.get("labels") != dataset_task(dataset_dir).get("labels"):
        raise KftuneError(
            f"{model_dir}: the model's labels {info.get('labels')} differ from the dataset's "
            f"{dataset_task(dataset_dir).get('labels')}; evaluate the model on the dataset it was trained on")
    train, test = splits["train"], splits["test"]
    y_true = task.label_array(test[LABEL])
    logits = predict_logits(torch_runner(model), test, config.batch_size)
    model_scores = task.scores(logits, y_true, info, full=True)
    baselines = task.baselines(train, test, info)
    baseline = baselines[task.baseline]
    deltas = {k: task.gain(k, model_scores[k], baseline[k]) for k in task.metrics}
    checks = task.checks(model_scores, deltas, config)
    result = {
        "task": config.task,
        "labels": info.get("labels", []),
        "test_size": len(test),
        "model": model_scores,
        "baselines": baselines,
        "baseline": task.baseline,
        "delta_vs_baseline": deltas,
        "checks": checks,
        "passed": all(checks.values()),
    }
    log.info("test %s; %s %s; gate %s",
             " ".join(f"{k} {model_scores[k]:.4f}" for k in task.metrics), task.baseline,
             " ".join(f"{k} {baseline[k]:.4f}" for k in task.metrics), "passed" if result["passed"] else "failed")
    return result


def flat_metrics(result: dict) -> dict[str, float]:
    """Scalars for a KFP ``Metrics`` artifact: model, baselines, deltas, gate."""
    if result.get("task") == "causal-lm":
        flat = {f"{who}_{k}": v for who, scores in (("model", result["model"]),
                                                   ("base_model", result["baselines"]["base_model"]))
                for k, v in scores.items()}
        flat.update({f"delta_{k}": v for k, v in result["delta_vs_baseline"].items()})
        flat["passed"] = float(result["passed"])
        return flat
    task = task_named(result.get("task", "classification"))
    flat = {f"model_{k}": result["model"][k] for k in task.metrics}
    if "roc_auc" in result["model"]:
        flat["model_roc_auc"] = result["model"]["roc_auc"]
    for name, scores in result["baselines"].items():
        flat.update({f"{name}_{k}": scores[k] for k in task.metrics})
    flat.update({f"delta_{k}": v for k, v in result["delta_vs_baseline"].items()})
    for label, scores in (result["model"].get("per_class") or result["model"].get("per_label") or {}).items():
        flat[f"model_f1_{label}"] = scores["f1"]
    flat["passed"] = float(result["passed"])
    return flat
