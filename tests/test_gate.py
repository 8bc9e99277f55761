"""The gate: each of its settings applies to every task that has the score it bounds, fails a model that does not
reach it, and is a one-line error for a task without that score (it would be ignored)."""

from __future__ import annotations

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
                       "min_f1_macro": "f1_macro"},
    "multilabel": {"min_primary_score": "f1_micro", "min_gain_over_baseline": "f1_micro", "min_f1_macro": "f1_macro"},
    "regression": {"max_primary_error": "rmse", "min_gain_over_baseline": "rmse"},
    "token-classification": {"min_primary_score": "f1", "min_gain_over_baseline": "f1"},
    "causal-lm": {"min_primary_score": "answer_accuracy", "min_gain_over_baseline": "answer_accuracy"},
}
"""What the evaluate README's table says, written out: a change to a task's gates must be a decision."""


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
    meets = {name: lowest_gain if name == "min_gain_over_baseline" else 0.0
             for name in APPLIES[task] if name != "max_primary_error"}  # max_primary_error -1: no limit
    result = evaluate(model_dir, dataset_dir, test_dir, EvaluateConfig(task=task, **meets))
    assert result["passed"] is True, result["checks"]
    if TASKS[task].intervals:  # every delta with its interval (tests/test_bootstrap.py)
        assert set(result["intervals"]) == set(result["delta_vs_baseline"]) == set(TASKS[task].metrics)
    scores = {name: (result["delta_vs_baseline"] if name == "min_gain_over_baseline" else result["model"])[metric]
              for name, metric in TASKS[task].gates(result.get("primary_metric", "")).items()}
    if task in STAGED:  # through the whole stage too (its wiring is the same for every task)
        bound = _beyond(STAGED[task], scores[STAGED[task]])
        failing = evaluate(model_dir, dataset_dir, test_dir,
                           EvaluateConfig(task=task, **(meets | {STAGED[task]: bound})))
        assert failing["passed"] is False
        assert [check for check, ok in failing["checks"].items() if not ok] == [
            check for check in failing["checks"] if check.endswith(f" {bound}")]
    for name in APPLIES[task]:
        config = EvaluateConfig(task=task, **(meets | {name: _beyond(name, scores[name])}))
        checks = TASKS[task].checks(result, config)
        assert sum(not ok for ok in checks.values()) == 1, (name, checks)
        config = dataclasses.replace(config, **{name: scores[name]})  # exactly reached: passes
        assert all(TASKS[task].checks(result, config).values()), (name, checks)


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
