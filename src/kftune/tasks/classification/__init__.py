"""classification: one label per text, from two or more classes.

Head: ``AutoModelForSequenceClassification`` with one logit per class; loss: cross-entropy
(optionally label-smoothed). Scores: accuracy, macro precision/recall/F1, per class, confusion
matrix, ROC AUC for two classes. Baselines: the majority class and TF-IDF + logistic
regression. Serving: the label, its id and every class's probability.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from kftune.data.bundled import BUNDLED_DATA
from kftune.errors import DataError
from kftune.inference.runners import softmax
from kftune.settings.fields import setting
from kftune.tasks.bootstrap import ratio
from kftune.tasks.encoder import ENCODER_DEFAULTS, EncoderTask, as_float, encoder_search_space, label_values

SUMMARY_KEYS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")


def _as_int(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value.strip())
    return None


def classification_scores(y_true, y_pred, names: list[str], probabilities=None) -> dict:
    """Accuracy, macro and per-class precision/recall/F1, confusion matrix, binary ROC AUC."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
        roc_curve,
    )

    labels = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    scores = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    if len(names) == 2 and probabilities is not None and len(set(y_true)) == 2:
        positive = probabilities[:, 1]
        scores["roc_auc"] = float(roc_auc_score(y_true, positive))
        fpr, tpr, thresholds = roc_curve(y_true, positive)
        scores["roc_curve"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()}
    return scores


def majority_baseline(train_labels, n_test: int) -> np.ndarray:
    """Predict the most frequent training label everywhere."""
    values, counts = np.unique(train_labels, return_counts=True)
    return np.full(n_test, values[np.argmax(counts)])


def tfidf_baseline(train_texts, train_labels, test_texts, seed: int = 0):
    """TF-IDF + logistic regression with scikit-learn's defaults: (predictions, probabilities).

    The textbook baseline, untuned on purpose: it is what "TF-IDF + logistic regression"
    means to a reader of the report. (On the bundled data a tuned variant, word 1-2 grams with
    sublinear tf and C=4, scores about 3 points higher; see docs/benchmarks.md.)
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000, random_state=seed))
    model.fit(list(train_texts), np.asarray(train_labels))
    return model.predict(list(test_texts)), model.predict_proba(list(test_texts))


@dataclass
class LabelSmoothing:
    """Classification's training loss."""

    label_smoothing: float = setting(0.0, searchable=True, ge=0, lt=1)
    """Label smoothing of the training loss: the target gives the true class 1 - label_smoothing and spreads the rest evenly over all classes (0: none)."""  # noqa: E501


class Classification(EncoderTask):
    intervals = True
    strata_checked = True  # check_labels proved every class splittable
    detect_order = 1000

    def detect(self, frame, config):
        """The default task: integer or text labels, or no label column to tell otherwise."""
        values = label_values(frame, config)
        if values is None:
            return f"no column {config.label_column!r} to tell otherwise"
        if not values:
            return f"column {config.label_column!r} is empty"
        numbers = [as_float(v) for v in values]
        if all(n is not None for n in numbers):
            return (f"column {config.label_column!r} holds {len(set(numbers))} distinct number(s), integers or "
                    "few")
        return f"column {config.label_column!r} holds text labels"

    def parse_labels(self, labels, source, column, config):
        """Integral numbers become ints, anything else a stripped string; blanks become None."""
        import pandas as pd

        present = labels[labels.notna()]
        numbers = present.map(_as_int)
        if len(present) and numbers.notna().all():
            return labels.map(lambda v: None if pd.isna(v) else _as_int(v))
        return labels.map(lambda v: None if pd.isna(v) or not str(v).strip() else str(v).strip())

    def train_info(self, train, info):
        """The most frequent class of the training split (the trivial answer early stopping waits for the model to
        beat)."""
        from kftune.data.schema import LABEL

        counts = np.bincount(np.asarray(train[LABEL], dtype=np.int64), minlength=len(info["labels"]))
        return {"majority_label": int(counts.argmax())}

    def trivial_logits(self, logits, info):
        if "majority_label" not in info:  # a dataset written before kftune recorded it
            return None
        trivial = np.zeros_like(logits)
        trivial[:, info["majority_label"]] = 1.0
        return trivial

    def label_info(self, labels) -> dict:
        """Sorted label values (numerically for integer labels) in id order."""
        return {"labels": [str(v) for v in sorted(labels.unique())]}

    def encode_labels(self, labels, info):
        ids = {name: i for i, name in enumerate(info["labels"])}
        return [ids[str(v)] for v in labels]

    def label_feature(self, info):
        import datasets

        return datasets.Value("int64")

    def label_strata(self, labels):
        return labels

    def check_labels(self, labels, config, source):
        from collections import Counter

        counts = Counter(labels)
        n, k = sum(counts.values()), len(counts)
        if n == 0:
            raise DataError(f"{source}: no rows left after cleaning; expected labelled, non-empty texts")
        if k < 2:
            raise DataError(f"{source}: column {config.label_column!r} has a single class ({next(iter(counts))!r}) "
                            "after cleaning; classification needs at least 2")
        rare = [(label, c) for label, c in counts.items() if c < 3]
        if rare:
            label, count = rare[0]
            raise DataError(f"{source}: class {label!r} has {count} row(s) after cleaning; a stratified "
                            "train/validation/test split needs at least 3 per class")
        for name, fraction in (("validation", config.validation_fraction), ("test", config.test_fraction)):
            if int(n * fraction) < k:
                raise DataError(
                    f"{source}: {n} rows are too few for a stratified split: the {name} split ({fraction:.0%}) would "
                    f"get {int(n * fraction)} rows for {k} classes; need at least {int(np.ceil(k / fraction))} rows")

    def label_distribution(self, stored, info):
        from collections import Counter

        return {info["labels"][k]: int(v) for k, v in sorted(Counter(stored).items())}

    def head(self, info):
        names = info["labels"]
        return {"num_labels": len(names), "id2label": dict(enumerate(names)),
                "label2id": {n: i for i, n in enumerate(names)}}

    def label_tensor(self, values, info):
        import torch

        return torch.tensor(values, dtype=torch.long)

    def loss(self, model, batch, config):
        """The model's own cross-entropy, or, with label smoothing, cross-entropy against smoothed targets (as
        transformers' ``LabelSmoother``)."""
        import torch

        if not config.label_smoothing:
            return model(**batch).loss
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        smoothing = config.label_smoothing
        return torch.nn.functional.cross_entropy(logits.float(), batch["labels"], label_smoothing=smoothing)

    def scores(self, logits, labels, info, full=False):
        names = info["labels"]
        if not full:
            from sklearn.metrics import accuracy_score, f1_score

            pred = logits.argmax(-1)
            return {"accuracy": float(accuracy_score(labels, pred)), "f1_macro": float(f1_score(labels, pred,
                                                                                                average="macro"))}
        return classification_scores(labels, logits.argmax(-1), names, softmax(logits))

    def write_files(self, directory, info):
        from kftune.data.schema import LABELS_FILE, LabelMap

        LabelMap(tuple(info["labels"])).save(directory / LABELS_FILE)

    def baselines(self, train, validation, test, info):
        from kftune.data.schema import LABEL, TEXT

        names, y_true = info["labels"], np.asarray(test[LABEL])
        majority_pred = majority_baseline(train[LABEL], len(test))
        tfidf_pred, tfidf_prob = tfidf_baseline(train[TEXT], train[LABEL], test[TEXT])
        return {"majority": {**classification_scores(y_true, majority_pred, names), "predictions": majority_pred},
                "tfidf_logreg": {**classification_scores(y_true, tfidf_pred, names, tfidf_prob),
                                 "predictions": tfidf_pred}}

    def example_statistics(self, truth, predicted, info):
        """One-hot true and predicted classes and their product (the true positives)."""
        eye = np.eye(len(info["labels"]))
        true, pred = eye[np.asarray(truth, dtype=int)], eye[np.asarray(predicted, dtype=int)]
        return {"true": true, "pred": pred, "tp": true * pred}

    def scores_from_sums(self, sums, info):
        """Accuracy and macro precision, recall and F1 over every class (0 where undefined), as
        :func:`classification_scores`."""
        tp, true, pred = sums["tp"], sums["true"], sums["pred"]
        return {"accuracy": ratio(tp.sum(-1), true.sum(-1)), "precision_macro": ratio(tp, pred).mean(-1),
                "recall_macro": ratio(tp, true).mean(-1), "f1_macro": ratio(2 * tp, true + pred).mean(-1)}

    def report_sections(self, result):
        from kftune.reports import figure_html, new_figure, table_html

        names = result["labels"]
        matrix = np.asarray(result["model"]["confusion_matrix"])
        fig, ax = new_figure(4 + 0.4 * len(names), 3.5 + 0.4 * len(names))
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
        sections = [
            "<h2>Per class</h2>",
            table_html(["label", "precision", "recall", "f1", "support"],
                       [(n, s["precision"], s["recall"], s["f1"], s["support"])
                        for n, s in result["model"]["per_class"].items()]),
            "<h2>Confusion matrix</h2>",
            figure_html(fig),
        ]
        if "roc_curve" in result["model"]:
            fig, ax = new_figure(4.5, 4)
            curve = result["model"]["roc_curve"]
            ax.plot(curve["fpr"], curve["tpr"], label=f"model (AUC {result['model']['roc_auc']:.3f})")
            base = result["baselines"]["tfidf_logreg"]
            if "roc_curve" in base:
                ax.plot(base["roc_curve"]["fpr"], base["roc_curve"]["tpr"],
                        label=f"TF-IDF (AUC {base['roc_auc']:.3f})")
            ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.legend()
            sections += ["<h2>ROC curve</h2>", figure_html(fig)]
        return sections

    def outputs(self, logits, info):
        names = info["labels"]
        probabilities = softmax(logits)
        return [{"label": names[int(row.argmax())], "label_id": int(row.argmax()),
                 "probabilities": {n: float(p) for n, p in zip(names, row, strict=True)}} for row in probabilities]

    def prediction_row(self, output):
        """label, label_id, the label's probability, ``p_<label>`` for each label."""
        probabilities = output["probabilities"]
        return {"label": output["label"], "label_id": output["label_id"],
                "probability": probabilities[output["label"]],
                **{f"p_{name}": p for name, p in probabilities.items()}}

    def v2_outputs(self, logits, info):
        names = info["labels"]
        probabilities = softmax(logits).astype(np.float32)
        ids = probabilities.argmax(axis=1).astype(np.int64)
        return [("label", "BYTES", np.array([names[i] for i in ids], dtype=np.object_)),
                ("label_id", "INT64", ids), ("probabilities", "FP32", probabilities)]


TASK = Classification(
    "classification",
    "one label per text",
    defaults={"data": BUNDLED_DATA, **ENCODER_DEFAULTS, "metric_for_best_model": "f1_macro", "learning_rate": 1e-4,
              "num_train_epochs": 3, "per_device_train_batch_size": 32, "min_primary_score": 0.8},
    search_space=encoder_search_space((3e-5, 2e-4)),
    metrics=SUMMARY_KEYS,
    primary="accuracy",
    best_metrics=("f1_macro", "accuracy", "loss"),
    baseline="tfidf_logreg",
    trivial="majority",
    settings={"train": (LabelSmoothing,)},
    is_default=True,
)
