"""The tune pipeline for the encoder tasks beyond classification, run as a user runs it: ``kftune tune --task
regression`` (the task whose metric is minimised; the tune pipeline has no per-task code beyond the metric and its
direction, checked below for every task) on a small file of its data (tests/task_data.py) with the tiny random
BERT, a grid of two learning rates, one epoch each. The search must optimise the task's validation metric in the
direction that improves it, and the final model, its evaluation and its export must carry the task.

Also the pieces a Katib search of these tasks needs (it runs on a cluster, so it is not run here): the direction
of each task's metric, and the trial command scoring and printing it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kftune.cli.main import main
from kftune.tasks import TASKS
from tests.task_data import write_task_data

# the task, its metric_for_best_model and the direction that improves it
OBJECTIVES = {"regression": ("rmse", "minimize"), "multilabel": ("f1_micro", "maximize"),
              "token-classification": ("f1", "maximize")}
# rows of data, batch size, epochs and the two learning rates searched: enough that the tiny model learns something
# with one rate and not with the other, so that the trials' scores differ (multilabel in one epoch learns nothing
# with either rate: both trials score the f1_micro of answering every label). The whole search runs for
# regression only (a minute each: CI time); for multilabel and token classification a trial is run (below).
SLICES = {"regression": (200, 8, 1, [1e-2, 1e-5]), "multilabel": (400, 8, 3, [3e-3, 1e-5]),
          "token-classification": (200, 8, 1, [1e-2, 1e-5])}


@pytest.mark.parametrize("task", list(OBJECTIVES))
def test_the_tasks_metric_and_its_direction_are_the_searchs(task):
    from kftune.components.tune.config import SearchConfig
    from kftune.components.tune.katib import default_direction

    metric, direction = OBJECTIVES[task]
    assert TASKS[task].defaults["metric_for_best_model"] == TASKS[task].primary == metric
    assert SearchConfig().direction_for(metric) == default_direction(metric) == direction


@pytest.mark.slow
@pytest.mark.parametrize("task", ["regression"])
def test_tune_command_searches_the_tasks_metric(task, tmp_path, tiny_model, capsys):
    metric, direction = OBJECTIVES[task]
    rows, batch_size, epochs, rates = SLICES[task]
    data = write_task_data(task, tmp_path, rows)
    results_file = tmp_path / "results.json"
    code = main(["tune", "--task", task, "--data", str(data), "--model", str(tiny_model), "--max-seq-length", "32",
                 "--algorithm", "grid", "--max-trials", "2", "--no-include-defaults",
                 "--search-space", json.dumps({"learning_rate": rates}), "--num-train-epochs", str(epochs),
                 "--per-device-train-batch-size", str(batch_size), "--min-gain-over-baseline", "-1",
                 "--no-quantize-int8",
                 "--output-dir", str(tmp_path / "runs"), "--results", str(results_file)])
    assert code == 0
    results = json.loads(results_file.read_text())
    search = results["search"]
    assert (search["metric"], search["direction"]) == (metric, direction)
    trials = search["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete"], trials
    assert [t["params"]["learning_rate"] for t in trials] == rates
    for t in trials:  # a trial's score is its best epoch's validation metric, which it reports with the others
        assert t["score"] == t["metrics"][f"val_{metric}"] == t["epoch_scores"][t["best_epoch"] - 1]
    scores = [t["score"] for t in trials]
    assert scores[0] != scores[1], trials  # otherwise the direction would not show
    assert search["best"]["score"] == (min(scores) if direction == "minimize" else max(scores))
    assert results["best_params"] == search["best"]["params"]
    out = capsys.readouterr().out
    assert f"({direction} validation {metric})" in out

    # the final model trained with the best parameters, on the task's metric, and was evaluated and exported as it
    model_dir = Path(results["artifacts"]["model"])
    history = json.loads((model_dir / "training_history.json").read_text())
    assert history["best_metric"] == metric
    assert history["config"]["task"] == task
    assert history["config"]["learning_rate"] == search["best"]["params"]["learning_rate"]
    assert results["task"] == task and results["baseline"]["name"] == TASKS[task].baseline
    assert set(TASKS[task].metrics) <= set(results["model"]) and metric in results["delta_vs_baseline"]
    exported = Path(results["artifacts"]["onnx_dir"])
    assert json.loads((exported / "export_report.json").read_text())["task"] == task
    assert (exported / "model.onnx").is_file()


# each task's trained fixture (tests/conftest.py) and the validation scores its trial prints
TRIAL_SCORES = {
    "regression": ("regression_run", {"val_rmse", "val_mae", "val_r2", "val_pearson", "val_spearman", "val_loss"}),
    "multilabel": ("multilabel_run", {"val_f1_micro", "val_f1_macro", "val_subset_accuracy", "val_hamming_loss",
                                      "val_loss"}),
    "token-classification": ("token_run", {"val_f1", "val_precision", "val_recall", "val_accuracy", "val_loss"}),
}


@pytest.mark.parametrize("task", list(OBJECTIVES))
def test_a_katib_trial_scores_and_prints_the_tasks_metric(task, tmp_path, tiny_model, capsys, request):
    """The trial command Katib runs (and each trial of a local search) trains with the task's metric and prints it,
    with the task's other scores, for Katib's StdOut collector; its score is the best epoch's."""
    from dataclasses import asdict

    from kftune.components.tune.trial import main as trial_main
    from kftune.training.config import TrainConfig

    fixture, scores = TRIAL_SCORES[task]
    dataset = request.getfixturevalue(fixture)[0] / "dataset"
    metric, _ = OBJECTIVES[task]
    config = tmp_path / "config.json"
    base = TrainConfig(task=task, model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=32,
                       save_steps=0)
    config.write_text(json.dumps(asdict(base)))
    assert trial_main(["--config", str(config), "--dataset", str(dataset), "--output", str(tmp_path / "trial"),
                       "--metric", metric, "--set", "learning_rate=3e-3", "--keep-model"]) == 0
    printed = dict(line.split("=") for line in capsys.readouterr().out.split())
    assert scores <= set(printed), printed
    # what Katib reads is the kept model's best validation score, with the best epoch's other scores
    history = json.loads((tmp_path / "trial" / "training_history.json").read_text())
    assert history["best_metric"] == metric
    assert float(printed[f"val_{metric}"]) == pytest.approx(history["best_score"], abs=1e-6)
    best = history["epochs"][history["best_epoch"] - 1]
    for name in scores:
        assert float(printed[name]) == pytest.approx(best[name], abs=1e-6), name


def test_the_gain_gate_is_bounded_only_where_the_primary_metric_is_a_score():
    """RMSE gains are in the target's units (a gain below -1 switches the regression gate off); a score's gain is in
    [-1, 1]; under auto the task is not known yet."""
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.errors import ConfigError

    EvaluateConfig(task="regression", min_gain_over_baseline=-5.0).validate()
    EvaluateConfig(task="auto", min_gain_over_baseline=-5.0).validate()
    for task in ("classification", "multilabel", "token-classification"):
        with pytest.raises(ConfigError, match=r"must be in \[-1, 1\]"):
            EvaluateConfig(task=task, min_gain_over_baseline=-5.0).validate()
    with pytest.raises(ConfigError, match="finite"):
        EvaluateConfig(task="regression", min_gain_over_baseline=float("nan")).validate()
