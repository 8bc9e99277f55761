"""Paired bootstrap intervals: each task's scores from sums equal its scikit-learn scores, the intervals cover a
known difference at their level, and evaluate, its metrics and the gate carry them."""

from __future__ import annotations

import numpy as np
import pytest

from kftune.components.evaluate.config import EvaluateConfig
from kftune.components.evaluate.evaluate import evaluate, flat_metrics
from kftune.components.evaluate.report import evaluation_report_html
from kftune.errors import ConfigError
from kftune.tasks import TASKS
from kftune.tasks.bootstrap import full_sums, paired_intervals
from kftune.tasks.classification import classification_scores
from kftune.tasks.multilabel import multilabel_scores
from kftune.tasks.regression import regression_scores


def _cases(rng):
    """(task, truth, predictions, info, scikit-learn's scores) on random data, with a class never predicted and a
    label never true."""
    truth, pred = rng.integers(0, 4, 300), rng.integers(0, 3, 300)
    yield "classification", truth, pred, {"labels": list("abcd")}, classification_scores(truth, pred, list("abcd"))
    y = (rng.random((300, 5)) < [0.3, 0.1, 0.5, 0.0, 0.2]).astype(int)
    p = np.where(rng.random((300, 5)) < 0.8, y, 1 - y)
    yield "multilabel", y, p, {"labels": list("vwxyz")}, multilabel_scores(y, p, list("vwxyz"))
    target = np.round(rng.normal(size=300), 1)  # ties, as rated targets have
    guess = target + rng.normal(scale=0.7, size=300)
    yield "regression", target, guess, {}, regression_scores(target, guess)


def test_each_tasks_scores_from_sums_are_its_scores():
    for name, truth, pred, info, expected in _cases(np.random.default_rng(3)):
        task = TASKS[name]
        scores = task.scores_from_sums(full_sums(task.example_statistics(truth, pred, info)), info)
        assert set(scores) == set(task.metrics), name
        for metric in task.metrics:
            assert scores[metric][0] == pytest.approx(expected[metric], abs=1e-9), (name, metric)


def test_the_gains_interval_covers_a_known_difference_at_its_level():
    """200 test sets of 300 examples: the model right with probability 0.75, the baseline with 0.65, the two
    correlated through examples hard for both; the 95% interval of the accuracy gain holds the true 0.10 in 90-99%
    of them."""
    task, info = TASKS["classification"], {"labels": ["no", "yes"]}
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    for replication in range(200):
        truth = rng.integers(0, 2, 300)
        hardness = rng.random(300)
        # the baseline sees the same hardness for half the examples and its own for the rest: still uniform
        baseline_hardness = np.where(rng.random(300) < 0.5, hardness, rng.random(300))
        model_right, baseline_right = hardness < 0.75, baseline_hardness < 0.65
        intervals = paired_intervals(
            task.example_statistics(truth, np.where(model_right, truth, 1 - truth), info),
            task.example_statistics(truth, np.where(baseline_right, truth, 1 - truth), info),
            lambda sums: task.scores_from_sums(sums, info), task.gain, seed=replication)
        accuracy = intervals["accuracy"]
        covered += accuracy["ci_low"] <= 0.10 <= accuracy["ci_high"]
        widths.append(accuracy["ci_high"] - accuracy["ci_low"])
        assert accuracy["model_ci_low"] <= model_right.mean() <= accuracy["model_ci_high"]
    assert 0.90 <= covered / 200 <= 0.99, covered
    assert 0.03 < np.mean(widths) < 0.2, np.mean(widths)


def test_evaluate_carries_an_interval_for_every_delta_and_the_gate_can_require_its_lower_bound(trained, prepared,
                                                                                                  prepared_test):
    result = evaluate(trained, prepared, prepared_test,
                      EvaluateConfig(min_primary_score=0.0, min_gain_over_baseline=-1))
    assert set(result["intervals"]) == set(result["delta_vs_baseline"]) and result["resamples"] == 1000
    for metric, delta in result["delta_vs_baseline"].items():
        interval = result["intervals"][metric]
        assert interval["ci_low"] <= delta <= interval["ci_high"], metric
        assert interval["model_ci_low"] <= result["model"][metric] <= interval["model_ci_high"], metric
    flat = flat_metrics(result)
    assert flat["delta_accuracy_ci_low"] == result["intervals"]["accuracy"]["ci_low"]
    assert "95% interval: low (1000 paired resamples)" in evaluation_report_html(result)

    # a gain exactly at the threshold passes on its point estimate, and fails when its lower bound must clear it
    task, delta = TASKS["classification"], result["delta_vs_baseline"]["accuracy"]
    assert result["intervals"]["accuracy"]["ci_low"] < delta  # 30 test examples: a wide interval
    point = EvaluateConfig(min_primary_score=0.0, min_gain_over_baseline=delta)
    assert all(task.checks(result, point).values())
    lower = EvaluateConfig(min_primary_score=0.0, min_gain_over_baseline=delta, gain_at_lower_bound=True)
    failed = [check for check, ok in task.checks(result, lower).items() if not ok]
    assert failed == [f"accuracy gain over tfidf_logreg, lower bound of its 95% interval, >= {delta}"]


@pytest.mark.parametrize("task", ["token-classification", "causal-lm"])
def test_requiring_the_lower_bound_where_a_task_has_no_intervals_is_a_one_line_error(task):
    assert not TASKS[task].intervals
    with pytest.raises(ConfigError, match=f"^gain_at_lower_bound: task {task} has no intervals"):
        EvaluateConfig(task=task, gain_at_lower_bound=True).validate()
