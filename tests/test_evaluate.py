"""Evaluation: metrics against hand-computed values, baselines, the gate, the report."""

from __future__ import annotations

import numpy as np
import pytest

from kftune.components.evaluate.config import EvaluateConfig
from kftune.components.evaluate.evaluate import evaluate, flat_metrics
from kftune.components.evaluate.report import evaluation_markdown, evaluation_report_html
from kftune.errors import ConfigError, KftuneError
from kftune.tasks.classification import classification_scores, majority_baseline, tfidf_baseline


def test_scores_match_hand_computation():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    scores = classification_scores(y_true, y_pred, ["a", "b", "c"])
    assert scores["accuracy"] == pytest.approx(4 / 6)
    # per class: a P=1 R=2/3; b P=1/2 R=1/2; c P=1/2 R=1
    assert scores["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    assert scores["precision_macro"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert scores["recall_macro"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    f1 = [0.8, 0.5, 2 / 3]
    assert scores["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert scores["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert "roc_auc" not in scores


def test_roc_auc_for_binary_only():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
    scores = classification_scores([0, 1, 1, 0], [0, 1, 1, 0], ["n", "p"], probs)
    assert scores["roc_auc"] == 1.0
    assert scores["roc_curve"]["fpr"][0] == 0.0


def test_baselines():
    assert majority_baseline([1, 1, 0], 4).tolist() == [1, 1, 1, 1]
    texts = ["great fun", "awful mess", "great acting", "awful plot"] * 5
    labels = [1, 0, 1, 0] * 5
    pred, prob = tfidf_baseline(texts, labels, ["great great", "awful awful"])
    assert pred.tolist() == [1, 0]
    assert prob.shape == (2, 2)


def test_evaluate_tiny_model(trained, prepared, prepared_test):
    result = evaluate(trained, prepared, prepared_test,
                      EvaluateConfig(min_primary_score=0.0, min_gain_over_baseline=-1))
    assert result["test_size"] == 30
    assert set(result["baselines"]) == {"majority", "tfidf_logreg"}
    assert result["passed"] is True
    assert result["delta_vs_baseline"]["accuracy"] == pytest.approx(
        result["model"]["accuracy"] - result["baselines"]["tfidf_logreg"]["accuracy"])
    assert np.asarray(result["model"]["confusion_matrix"]).sum() == 30
    flat = flat_metrics(result)
    assert flat["passed"] == 1.0 and "model_roc_auc" in flat
    failing = evaluate(trained, prepared, prepared_test, EvaluateConfig(min_primary_score=1.0))
    assert failing["passed"] is False
    assert "FAIL: accuracy >= 1.0" in evaluation_markdown(failing)
    html = evaluation_report_html(result)
    assert html.count("data:image/png;base64") == 2  # confusion matrix + ROC curve


def test_label_mismatch_is_refused(tmp_path, prepared, prepared_test):
    from tests.conftest import make_tiny_model

    three = make_tiny_model(tmp_path / "three", num_labels=3)
    with pytest.raises(KftuneError, match="labels .* differ from the dataset's"):
        evaluate(three, prepared, prepared_test, EvaluateConfig())


def test_bad_thresholds():
    with pytest.raises(ConfigError, match="min_primary_score"):
        EvaluateConfig(min_primary_score=1.5).validate()
