"""Paired bootstrap intervals: each task's scores from sums equal its own scores (scikit-learn's, seqeval's, a causal
LM's answer scores), the intervals cover a known difference at their level, and evaluate, its metrics and the gate
carry them. Token classification's and causal-lm's evaluate runs check theirs in their own test files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kftune.components.evaluate.config import EvaluateConfig
from kftune.components.evaluate.evaluate import evaluate, flat_metrics
from kftune.components.evaluate.report import evaluation_report_html
from kftune.errors import ConfigError
from kftune.tasks import TASKS
from kftune.tasks.bootstrap import full_sums, paired_intervals
from kftune.tasks.causal_lm.evaluation import answer_scores, prompt_statistics
from kftune.tasks.classification import classification_scores
from kftune.tasks.multilabel import multilabel_scores
from kftune.tasks.regression import regression_scores
from kftune.tasks.token_classification.data import repair_iob2
from kftune.tasks.token_classification.entities import scores as entity_scores


def _tag_sequences(rng, tags, sentences):
    """Random IOB2 tag sequences (0 to 11 words each), and predictions of them with a third of the tags wrong."""
    true, pred = [], []
    for _ in range(sentences):
        words = rng.choice(tags, int(rng.integers(0, 12)), p=[0.55, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05]).tolist()
        true.append(repair_iob2(words)[0])
        pred.append(repair_iob2([t if rng.random() < 0.67 else str(rng.choice(tags)) for t in true[-1]])[0])
    return true, pred


def _cases(rng):
    """(task, truth, predictions, info, the task's own scores) on random data: a class never predicted, a label never
    true, entity types one side never has, empty sentences, generations that start with no allowed answer."""
    truth, pred = rng.integers(0, 4, 300), rng.integers(0, 3, 300)
    yield "classification", truth, pred, {"labels": list("abcd")}, classification_scores(truth, pred, list("abcd"))
    y = (rng.random((300, 5)) < [0.3, 0.1, 0.5, 0.0, 0.2]).astype(int)
    p = np.where(rng.random((300, 5)) < 0.8, y, 1 - y)
    yield "multilabel", y, p, {"labels": list("vwxyz")}, multilabel_scores(y, p, list("vwxyz"))
    target = np.round(rng.normal(size=300), 1)  # ties, as rated targets have
    guess = target + rng.normal(scale=0.7, size=300)
    yield "regression", target, guess, {}, regression_scores(target, guess)
    tags = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER", "B-ORG", "I-ORG"]
    true, pred = _tag_sequences(rng, tags, 200)
    ids = TASKS["token-classification"].label_array([[tags.index(t) for t in seq] for seq in true])  # as stored
    yield "token-classification", ids, pred, {"labels": tags}, entity_scores(true, pred)
    answers = ["negative", "positive"]
    references = rng.choice(answers, 100).tolist()
    generations = rng.choice(["Positive.", "negative", "positive, I think", "neutral", "the answer is negative"],
                             100).tolist()
    answered = {"generations": generations, "loss": rng.random(100) * 8, "loss_tokens": rng.integers(1, 6, 100)}
    own = answer_scores(prompt_statistics(generations, references, answers, answered["loss"],
                                          answered["loss_tokens"]))
    yield "causal-lm", references, answered, {"answers": answers}, own
    # preference pairs: log-probabilities rounded so that some pairs tie (a tie counts half)
    policy, reference = (torch.tensor(np.round(rng.normal(-5, 1, (100, 2)), 1)) for _ in range(2))
    p, r = policy.numpy(), reference.numpy()
    margin = 0.1 * ((p[:, 0] - r[:, 0]) - (p[:, 1] - r[:, 1]))
    own = {"preference_accuracy": float(np.mean((p[:, 0] > p[:, 1]) + 0.5 * (p[:, 0] == p[:, 1]))),
           "reward_accuracy": float(np.mean(margin > 0)), "reward_margin": float(margin.mean())}
    yield "dpo", None, {"logps": policy, "reference": reference, "beta": 0.1}, {}, own


def test_each_tasks_scores_from_sums_are_its_scores():
    cases = list(_cases(np.random.default_rng(3)))
    assert {name for name, *_ in cases} == set(TASKS)  # every task has intervals
    for name, truth, pred, info, expected in cases:
        task = TASKS[name]
        scores = task.scores_from_sums(full_sums(task.example_statistics(truth, pred, info)), info)
        assert set(scores) == set(task.metrics), name
        for metric in task.metrics:
            assert scores[metric][0] == pytest.approx(expected[metric], abs=1e-9), (name, metric)


def test_a_causal_lms_scores_by_hand():
    """Exact match, answer accuracy, ROUGE-L and perplexity of three answers worked out by hand: perplexity is the
    exponential of the loss over every reference token (a long reference weighs more), not of the prompts' mean."""
    task, info = TASKS["causal-lm"], {"answers": ["negative", "positive"]}
    answered = {"generations": ["Positive.", "positive, surely", "no idea"], "loss": np.array([1.0, 2.0, 6.0]),
                "loss_tokens": np.array([1, 1, 4])}
    statistics = task.example_statistics(["positive", "positive", "negative"], answered, info)
    scores = {k: v[0] for k, v in task.scores_from_sums(full_sums(statistics), info).items()}
    assert scores["exact_match"] == pytest.approx(1 / 3) and scores["answer_accuracy"] == pytest.approx(2 / 3)
    # ROUGE-L F-measure: 1, then 1 of 1 reference word in 2 generated words (2/3), then nothing
    assert scores["rouge_l"] == pytest.approx((1 + 2 / 3) / 3)
    assert scores["perplexity"] == pytest.approx(np.exp(9 / 6))
    assert answer_scores(statistics)["unanswered"] == pytest.approx(1 / 3)


def test_token_classifications_counts_are_seqevals_entities():
    """Strict IOB2 as seqeval scores it: a predicted entity counts only with its type and both boundaries right."""
    task, tags = TASKS["token-classification"], ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"], []]
    pred = [["B-PER", "O", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"], []]
    statistics = task.example_statistics(task.label_array([[tags.index(t) for t in s] for s in true]), pred,
                                         {"labels": tags})
    assert statistics["true"].tolist() == [[1, 1], [1, 0], [0, 0]]  # columns LOC, PER
    assert statistics["pred"].tolist() == [[1, 1], [1, 0], [0, 0]]
    assert statistics["tp"].tolist() == [[1, 0], [1, 0], [0, 0]]  # the cut-short person is wrong
    assert statistics["correct_words"].tolist() == [3, 3, 0] and statistics["words"].tolist() == [4, 3, 0]


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


def test_every_task_takes_the_lower_bound_and_one_without_intervals_refuses_it(monkeypatch):
    """Every kftune task gives intervals; a task from outside kftune need not (its ``intervals`` False: no
    ``example_statistics``), and then requiring the lower bound is a one-line error, not a gate that cannot run."""
    for name in TASKS:
        EvaluateConfig(task=name, gain_at_lower_bound=True).validate()
    task = TASKS["classification"]
    without = type("WithoutIntervals", (type(task),), {"intervals": False})(
        **{f.name: getattr(task, f.name) for f in dataclasses.fields(task)})
    monkeypatch.setitem(TASKS, "classification", without)
    with pytest.raises(ConfigError, match="^gain_at_lower_bound: task classification gives no intervals of its "):
        EvaluateConfig(task="classification", gain_at_lower_bound=True).validate()
