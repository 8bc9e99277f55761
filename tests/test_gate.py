"""The gate: each of its settings applies to every task that has the score it bounds, fails a model that does not
reach it, and is a one-line error for a task without that score (it would be ignored)."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from kftune.cli.main import main
from kftune.components.evaluate.config import GATE_SETTINGS, EvaluateConfig
from kftune.components.evaluate.evaluate import evaluate
from kftune.errors import ConfigError
from kftune.tasks import TASKS
from tests.task_data import write_regression_csv

APPLIES = {
    "classification": {"min_primary_score": "accuracy", "min_gain_over_baseline": "accuracy",
                       "min_f1_macro": "f1_macro", "max_loss_to_trivial": "majority"},
    "multilabel": {"min_primary_score": "f1_micro", "min_gain_over_baseline": "f1_micro", "min_f1_macro": "f1_macro",
                   "max_loss_to_trivial": "most_frequent_set"},
    "regression": {"max_primary_error": "rmse", "min_gain_over_baseline": "rmse", "max_loss_to_trivial": "mean"},
    "token-classification": {"min_primary_score": "f1", "min_gain_over_baseline": "f1",
                             "max_loss_to_trivial": "most_frequent_tag"},
    "causal-lm": {"min_primary_score": "answer_accuracy", "min_gain_over_baseline": "answer_accuracy"},
}
"""What the evaluate README's table says, written out: a change to a task's gates must be a decision
(``max_loss_to_trivial``: the trivial baseline every score is held against)."""
OFF = {"max_primary_error": -1, "max_loss_to_trivial": -1}
"""Settings that check nothing at -1 (no limit, no comparison with the trivial answer)."""


@pytest.mark.parametrize("task", list(APPLIES))
def test_each_task_has_the_gates_of_its_scores(task):
    assert TASKS[task].gates() == APPLIES[task]


def _run(request, task):
    """(model dir, dataset dir, test split dir) of a model of ``task`` trained by a session fixture."""
    if task == "classification":
        return (request.getfixturevalue("trained"), request.getfixturevalue("prepared"),
                request.getfixturevalue("prepared_test"))
    if task == "causal-lm":
        return (request.getfixturevalue("trained_lm"), request.getfixturevalue("prepared_lm"),
                request.getfixturevalue("prepared_lm_test"))
    work = request.getfixturevalue({"regression": "regression_run", "multilabel": "multilabel_run",
                                    "token-classification": "token_run"}[task])[0]
    return work / "model", work / "dataset", work / "test_split"


STAGED = {"multilabel": "min_f1_macro", "regression": "max_primary_error"}
"""The settings also checked through a second whole evaluate: multi-label's macro F1 (a threshold once ignored for
every task but classification) and the error bound of regression."""


def _beyond(name: str, score: float) -> float:
    """A bound of setting ``name`` that ``score`` just misses."""
    return score - 1e-3 if name == "max_primary_error" else score + 1e-3


@pytest.mark.parametrize("task", list(APPLIES))
def test_the_gate_fails_a_model_below_each_of_its_settings(task, request):
    """Each applicable setting set just out of the model's reach fails the gate on that check alone (the others at
    bounds the model meets), and set at the model's score passes it: through the task's checks of the stage's
    result, and for :data:`STAGED` through the stage itself."""
    model_dir, dataset_dir, test_dir = _run(request, task)
    lowest_gain = -1.0 if TASKS[task].higher_is_better(TASKS[task].primary) else -1e6
    meets = {name: lowest_gain if name == "min_gain_over_baseline" else OFF.get(name, 0.0)
             for name in APPLIES[task]}  # the tiny models may lose to the trivial answer: tested below
    result = evaluate(model_dir, dataset_dir, test_dir, EvaluateConfig(task=task, **meets))
    assert result["passed"] is True, result["checks"]
    if TASKS[task].intervals:  # every delta with its interval (tests/test_bootstrap.py)
        assert set(result["intervals"]) == set(result["delta_vs_baseline"]) == set(TASKS[task].metrics)
    scores = {name: (result["delta_vs_baseline"] if name == "min_gain_over_baseline" else result["model"])[metric]
              for name, metric in TASKS[task].gates(result.get("primary_metric", "")).items()
              if name != "max_loss_to_trivial"}
    if task in STAGED:  # through the whole stage too (its wiring is the same for every task)
        bound = _beyond(STAGED[task], scores[STAGED[task]])
        failing = evaluate(model_dir, dataset_dir, test_dir,
                           EvaluateConfig(task=task, **(meets | {STAGED[task]: bound})))
        assert failing["passed"] is False
        assert [check for check, ok in failing["checks"].items() if not ok] == [
            check for check in failing["checks"] if check.endswith(f" {bound}")]
    for name in scores:
        config = EvaluateConfig(task=task, **(meets | {name: _beyond(name, scores[name])}))
        checks = TASKS[task].checks(result, config)
        assert sum(not ok for ok in checks.values()) == 1, (name, checks)
        config = dataclasses.replace(config, **{name: scores[name]})  # exactly reached: passes
        assert all(TASKS[task].checks(result, config).values()), (name, checks)


@pytest.mark.parametrize("task", [task for task in APPLIES if "max_loss_to_trivial" in APPLIES[task]])
def test_the_gate_fails_a_model_worse_than_the_trivial_answer_on_any_score(task, request):
    """Each score the trivial baseline has, made 2 points better than the model's, fails the gate at the default
    tolerance (0.01) on that score alone, with a line naming it; half a point better passes; -1 checks nothing."""
    model_dir, dataset_dir, test_dir = _run(request, task)
    result = evaluate(model_dir, dataset_dir, test_dir, EvaluateConfig(task=task, max_loss_to_trivial=-1))
    trivial, checked = TASKS[task].trivial, []
    assert not any("not worse than" in check for check in result["checks"])
    for metric in TASKS[task].result_metrics(result):
        if metric not in result["baselines"][trivial]:
            continue
        checked.append(metric)
        sign = 1 if TASKS[task].higher_is_better(metric) else -1
        for better_by, passes in ((0.02, False), (0.005, True)):
            edited = copy.deepcopy(result)
            edited["baselines"][trivial][metric] = result["model"][metric] + sign * better_by
            checks = TASKS[task].trivial_checks(edited, EvaluateConfig(task=task).max_loss_to_trivial)
            failed = [check for check, ok in checks.items() if not ok]
            if passes:
                assert metric not in " ".join(failed), failed
            else:
                assert [f for f in failed if f.startswith(f"{metric} ")] == [
                    f"{metric} not worse than {trivial} ({edited['baselines'][trivial][metric]:.4f}) by more than "
                    "0.01"], failed
    assert TASKS[task].primary in checked


def test_a_multilabel_model_that_predicts_every_label_fails_the_default_gate(multilabel_run, tmp_path):
    """The collapse of issue 34 (a model that puts every label on every text: subset accuracy 0, Hamming loss far
    above predicting no label), made by setting a trained model's thresholds to 0: the default gate fails it on
    subset accuracy and Hamming loss against the empty set, though its micro F1 is above 0 and the task's
    min_primary_score (0) and gain over TF-IDF would have let it through."""
    import json
    import shutil

    work = multilabel_run[0]
    collapsed = tmp_path / "collapsed"
    shutil.copytree(work / "model", collapsed)
    info = json.loads((collapsed / "task.json").read_text())
    info["thresholds"] = [0.0] * len(info["labels"])
    (collapsed / "task.json").write_text(json.dumps(info))
    result = evaluate(collapsed, work / "dataset", work / "test_split",
                      EvaluateConfig(task="multilabel", min_gain_over_baseline=-1.0))
    assert result["model"]["subset_accuracy"] < result["baselines"]["most_frequent_set"]["subset_accuracy"]
    assert result["passed"] is False
    failed = [check for check, ok in result["checks"].items() if not ok]
    assert {check.split()[0] for check in failed} >= {"subset_accuracy", "hamming_loss"}, failed
    assert all("not worse than most_frequent_set" in check for check in failed), failed
    off = evaluate(collapsed, work / "dataset", work / "test_split",
                   EvaluateConfig(task="multilabel", min_gain_over_baseline=-1.0, max_loss_to_trivial=-1))
    assert off["passed"] is True, off["checks"]


@pytest.mark.parametrize(("task", "name", "value"), [
    (task, name, 0.5) for task in APPLIES for name in GATE_SETTINGS
    if name not in APPLIES[task] and name != "min_gain_over_baseline"])
def test_a_gate_setting_a_task_has_no_score_for_is_a_one_line_error(task, name, value):
    with pytest.raises(ConfigError, match=f"^{name} does not apply to task {task} "):
        EvaluateConfig(task=task, **{name: value}).validate()
    EvaluateConfig(task=task).validate()  # at its default it is no error


def test_the_run_refuses_it_before_starting_once_the_data_says_the_task(tmp_path, capsys):
    """task auto: the data decides (a CSV of scores: regression), and the F1 threshold is refused before the
    pipeline starts, writing nothing."""
    data = write_regression_csv(tmp_path / "scores.csv", 60)
    runs = tmp_path / "runs"
    code = main(["run", "--data", str(data), "--min-f1-macro", "0.5", "--output-dir", str(runs)])
    assert code == 2
    err = capsys.readouterr().err
    assert "min_f1_macro does not apply to task regression" in err and len(err.strip().splitlines()) == 1
    assert not runs.exists() or not any(runs.iterdir())
