"""regression: one number per text (a rating, a severity, a sentiment intensity).

Targets are read as floats and normalised for training with the mean and standard deviation
of the training split alone (recorded in ``task.json`` and inverted for every score and prediction).
Head: ``AutoModelForSequenceClassification`` with one output (``problem_type="regression"``);
loss: MSE or Huber (``regression_loss``) on the normalised target. Scores: RMSE, MAE, R²,
Pearson, Spearman. Baselines: the training mean, and TF-IDF + ridge regression. Serving: the
score. The split is stratified by quantile bins of the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kftune.data.bundled import REGRESSION_DATA
from kftune.data.schema import LABEL
from kftune.errors import DataError
from kftune.tasks.bootstrap import correlation, ratio
from kftune.tasks.encoder import ENCODER_DEFAULTS, EncoderTask, as_float, encoder_search_space, label_values

METRICS = ("rmse", "mae", "r2", "pearson", "spearman")
POINTS_SHOWN = 2000  # predicted-vs-true pairs kept in the results for the report's plots


def regression_scores(y_true, y_pred, full: bool = False) -> dict:
    """RMSE, MAE, R², Pearson and Spearman correlation (0 where a correlation is undefined)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    constant = np.ptp(y_pred) == 0 or np.ptp(y_true) == 0
    scores = {
        "rmse": float(math.sqrt(mean_squared_error(y_true, y_pred))),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)),
        "pearson": 0.0 if constant else float(pearsonr(y_true, y_pred)[0]),
        "spearman": 0.0 if constant else float(spearmanr(y_true, y_pred)[0]),
    }
    if full:
        residuals = y_pred - y_true
        scores["residuals"] = {"mean": float(residuals.mean()), "std": float(residuals.std()),
                               "p95_abs": float(np.percentile(np.abs(residuals), 95))}
        keep = slice(0, POINTS_SHOWN)
        scores["points"] = {"true": y_true[keep].tolist(), "predicted": y_pred[keep].tolist()}
    return scores


def tfidf_ridge(train_texts, train_targets, test_texts) -> np.ndarray:
    """TF-IDF + ridge regression with scikit-learn's defaults (the textbook baseline, untuned)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(), Ridge())
    model.fit(list(train_texts), np.asarray(train_targets, dtype=np.float64))
    return model.predict(list(test_texts))


@dataclass
class RegressionLoss:
    """Regression's training loss."""

    regression_loss: Literal["mse", "huber"] = "mse"
    """The training loss on the normalised target: mean squared error, or Huber (less swayed by outliers)."""


class Regression(EncoderTask):
    intervals = True
    detect_order = 40

    def detect(self, frame, config):
        """Non-integer numbers with 10 or more distinct values."""
        values = label_values(frame, config)
        numbers = [as_float(v) for v in values or ()]
        if not numbers or any(n is None for n in numbers) or all(float(n).is_integer() for n in numbers):
            return None
        distinct = len(set(numbers))
        if distinct < 10:
            return None
        return f"column {config.label_column!r} holds non-integer numbers ({distinct} distinct values)"

    def parse_labels(self, labels, source, column, config):
        import pandas as pd

        parsed = labels.map(lambda v: None if v is None or (not isinstance(v, str) and pd.isna(v))
                            or (isinstance(v, str) and not v.strip()) else as_float(v))
        bad = labels[parsed.isna() & labels.map(lambda v: not (v is None or (not isinstance(v, str) and pd.isna(v))
                                                          or (isinstance(v, str) and not v.strip())))]
        if len(bad):
            row = int(bad.index[0])
            raise DataError(f"{source}: row {row + 1}, column {column!r}: {bad.iloc[0]!r} is not a number; task "
                            "regression needs a finite number in every row")
        return parsed

    def label_info(self, labels):
        return {}  # its normalisation comes from the training split alone (train_info)

    def train_info(self, train, info):
        """The target's normalisation, from the training split alone."""
        values = np.asarray(train[LABEL], dtype=np.float64)
        return {"target_mean": float(values.mean()), "target_std": float(values.std()) or 1.0}

    def encode_labels(self, labels, info):
        return [float(v) for v in labels]

    def label_feature(self, info):
        import datasets

        return datasets.Value("float32")

    def label_strata(self, labels):
        """Quantile bins of the target (up to 10, fewer for small data)."""
        import pandas as pd

        bins = max(2, min(10, len(labels) // 30))
        return pd.qcut(labels.astype(float), q=bins, labels=False, duplicates="drop")

    def check_labels(self, labels, config, source):
        super().check_labels(labels, config, source)
        if labels.nunique() < 2:
            raise DataError(f"{source}: column {config.label_column!r} holds one value ({labels.iloc[0]}) after "
                            "cleaning; regression needs targets that vary")

    def label_distribution(self, stored, info):
        values = np.asarray(stored, dtype=np.float64)
        return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                "p50": float(np.median(values)), "max": float(values.max())}

    def head(self, info):
        return {"num_labels": 1, "problem_type": "regression", "id2label": {0: "score"}, "label2id": {"score": 0}}

    def label_tensor(self, values, info):
        import torch

        return (torch.tensor(values, dtype=torch.float32) - info["target_mean"]) / info["target_std"]

    def loss(self, model, batch, config):
        import torch

        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float().squeeze(-1)
        if config.regression_loss == "huber":
            return torch.nn.functional.huber_loss(logits, batch["labels"])
        return torch.nn.functional.mse_loss(logits, batch["labels"])

    def predictions(self, logits, info) -> np.ndarray:
        """Scores in the target's own units."""
        return np.asarray(logits, dtype=np.float64)[:, 0] * info["target_std"] + info["target_mean"]

    def scores(self, logits, labels, info, full=False):
        return regression_scores(labels, self.predictions(logits, info), full)

    def trivial_logits(self, logits, info):
        return np.zeros_like(logits)  # the training mean, in the normalised units the head predicts

    def baselines(self, train, validation, test, info):
        from kftune.data.schema import LABEL, TEXT

        y_train, y_test = np.asarray(train[LABEL], dtype=np.float64), np.asarray(test[LABEL], dtype=np.float64)
        mean, ridge = np.full(len(y_test), y_train.mean()), tfidf_ridge(train[TEXT], y_train, test[TEXT])
        return {"mean": {**regression_scores(y_test, mean, full=True), "predictions": mean},
                "tfidf_ridge": {**regression_scores(y_test, ridge, full=True), "predictions": ridge}}

    def predicted(self, logits, labels, info):
        return self.predictions(logits, info)

    def example_statistics(self, truth, predicted, info):
        """Errors, and the moments of the targets and predictions and of their ranks over the whole test set (the
        resamples keep those ranks: Spearman's correlation is Pearson's of the ranks)."""
        from scipy.stats import rankdata

        y, p = np.asarray(truth, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
        statistics = {"squared_error": (p - y) ** 2, "absolute_error": np.abs(p - y), "examples": np.ones(len(y))}
        for prefix, (a, b) in {"": (y, p), "rank_": (rankdata(y), rankdata(p))}.items():
            statistics |= {f"{prefix}y": a, f"{prefix}p": b, f"{prefix}yy": a * a, f"{prefix}pp": b * b,
                           f"{prefix}yp": a * b}
        return statistics

    def scores_from_sums(self, sums, info):
        """As :func:`regression_scores`: RMSE, MAE, R², and Pearson's and Spearman's correlations (0 where a side is
        constant)."""
        n = sums["examples"]
        total = sums["yy"] - sums["y"] ** 2 / n
        scores = {"rmse": np.sqrt(sums["squared_error"] / n), "mae": sums["absolute_error"] / n,
                  "r2": 1 - ratio(sums["squared_error"], total)}
        for name, prefix in (("pearson", ""), ("spearman", "rank_")):
            scores[name] = correlation(*(sums[f"{prefix}{k}"] for k in ("y", "p", "yy", "pp", "yp")), n)
        return scores

    def report_sections(self, result):
        from kftune.reports import figure_html, new_figure

        points = result["model"]["points"]
        y_true, y_pred = np.asarray(points["true"]), np.asarray(points["predicted"])
        fig, (left, right) = new_figure(9, 4, ncols=2)
        left.scatter(y_true, y_pred, s=8, alpha=0.5, label="fine-tuned")
        ridge = result["baselines"]["tfidf_ridge"]["points"]
        left.scatter(ridge["true"], ridge["predicted"], s=8, alpha=0.3, label="TF-IDF + ridge")
        low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
        left.plot([low, high], [low, high], "k:", linewidth=0.8)
        left.set_xlabel("true")
        left.set_ylabel("predicted")
        left.legend()
        right.hist(y_pred - y_true, bins=30)
        right.set_xlabel("residual (predicted - true)")
        right.set_ylabel("texts")
        return ["<h2>Predicted vs true, residuals</h2>", figure_html(fig)]

    def decisions(self, logits, info):
        return None

    def outputs(self, logits, info):
        return [{"score": float(s)} for s in self.predictions(logits, info)]

    def v2_outputs(self, logits, info):
        return [("score", "FP32", self.predictions(logits, info).astype(np.float32))]


TASK = Regression(
    "regression",
    "one number per text",
    defaults={"data": REGRESSION_DATA, **ENCODER_DEFAULTS, "metric_for_best_model": "rmse", "learning_rate": 1e-4,
              "num_train_epochs": 3, "per_device_train_batch_size": 32},
    search_space=encoder_search_space((3e-5, 2e-4)),
    metrics=METRICS,
    primary="rmse",
    lower_is_better=frozenset({"loss", "rmse", "mae"}),
    best_metrics=("rmse", "mae", "r2", "pearson", "spearman", "loss"),
    baseline="tfidf_ridge",
    trivial="mean",
    settings={"train": (RegressionLoss,)},
)
