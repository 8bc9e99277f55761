"""multilabel: a set of labels per text (topics, intents, moderation categories), possibly empty.

Labels come as a list column (a JSON list in CSV/JSONL, a Parquet list) or as text joined by
``label_separator``. Head: ``AutoModelForSequenceClassification`` with one logit per label
(``problem_type="multi_label_classification"``), its output bias started at each label's log-odds in the
training split; loss: binary cross-entropy with logits. The decision thresholds are chosen on the validation
split after training, jointly: those that maximise micro F1 over all labels (recorded in ``task.json``, used by
evaluation, export, serving and prediction).
Scores: micro and macro F1, subset accuracy, Hamming loss, per-label P/R/F1.
Baselines: the most frequent label set, and TF-IDF + one-vs-rest logistic regression, its thresholds chosen
on the validation split as the model's are. The
split is stratified by label set (sets seen fewer than 3 times pooled).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from kftune.data.bundled import MULTILABEL_DATA
from kftune.errors import DataError
from kftune.inference.runners import sigmoid
from kftune.tasks.bootstrap import ratio
from kftune.tasks.encoder import ENCODER_DEFAULTS, EncoderTask, encoder_search_space, label_values

METRICS = ("f1_micro", "f1_macro", "subset_accuracy", "hamming_loss")
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def label_list(value, separator: str):
    """The labels of one cell as a list of strings, or None where the cell holds no list (raises ValueError where
    it holds something else)."""
    import pandas as pd

    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    elif value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{text[:40]!r} is not a JSON list ({error.msg})") from None
            if not isinstance(items, list):
                raise ValueError(f"{text[:40]!r} is not a JSON list")
        elif separator:
            items = text.split(separator) if text else []
        else:
            raise ValueError(f"{text[:40]!r} is neither a list nor a JSON list (set label_separator for labels "
                             "joined by a separator)")
    else:
        raise ValueError(f"{value!r} is not a list of labels")
    labels = []
    for item in items:
        if isinstance(item, (dict, list)) or item is None:
            raise ValueError(f"list item {item!r} is not a label")
        text = str(item).strip()
        if text:
            labels.append(text)
    return labels


def multilabel_scores(y_true: np.ndarray, y_pred: np.ndarray, names: list[str], full: bool = False) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    scores = {
        "f1_micro": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
    }
    if full:
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
        scores["per_label"] = {n: {"precision": float(a), "recall": float(b), "f1": float(c), "support": int(d)}
                               for n, a, b, c, d in zip(names, p, r, f, s, strict=True)}
    return scores


def best_thresholds(probabilities: np.ndarray, y_true: np.ndarray) -> list[float]:
    """The thresholds (of :data:`THRESHOLDS`, or 1.0: never) that maximise micro F1 over all labels jointly on
    these examples: the best single threshold for every label first, then each label's in turn given the others'
    until none changes (coordinate ascent; a label moves only for a strictly better micro F1, so it ends). A label
    whose own F1 is best at a low threshold but that adds more false positives than true ones overall gets a high
    one: per-label F1-optimal thresholds over-predict rare, weakly learnt labels. Labels absent here keep 0.5."""
    y_true = np.asarray(y_true, dtype=bool)
    candidates = np.append(THRESHOLDS, 1.0)
    predicted = probabilities[:, :, None] >= candidates  # examples x labels x candidates
    tp = (predicted & y_true[:, :, None]).sum(axis=0).astype(np.float64)  # labels x candidates
    fp = (predicted & ~y_true[:, :, None]).sum(axis=0).astype(np.float64)
    positives = float(y_true.sum())

    def micro_f1(tps, fps):
        return np.divide(2 * tps, tps + fps + positives, out=np.zeros_like(tps), where=tps + fps + positives > 0)

    present = y_true.any(axis=0)
    half = int(np.flatnonzero(candidates == 0.5)[0])
    overall = micro_f1(tp[present].sum(axis=0), fp[present].sum(axis=0))
    chosen = np.where(present, len(candidates) - 1 - int(np.argmax(overall[::-1])), half)  # ties: the higher one
    rows = np.arange(len(chosen))
    for _ in range(20):
        changed = False
        for j in np.flatnonzero(present):
            rest_tp = tp[rows, chosen].sum() - tp[j, chosen[j]]
            rest_fp = fp[rows, chosen].sum() - fp[j, chosen[j]]
            scores = micro_f1(rest_tp + tp[j], rest_fp + fp[j])
            best = len(candidates) - 1 - int(np.argmax(scores[::-1]))
            if scores[best] > scores[chosen[j]] + 1e-12:
                chosen[j], changed = best, True
        if not changed:
            break
    return [float(candidates[k]) for k in chosen]


def output_layer(model, width: int):
    """The head's output ``Linear`` (``width`` outputs, under a module named ``classifier`` or ``score``; under
    peft, each copy), as a list."""
    import torch

    return [module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module.out_features == width and module.bias is not None
            and {"classifier", "score"} & set(name.split("."))]


@dataclass
class LabelList:
    """How multi-label data writes a set of labels in one cell."""

    label_separator: str = ""
    """Labels joined by this separator in one text cell (e.g. "," or "|"); empty: labels come as lists (a JSON list, a Parquet list)."""  # noqa: E501


def _is_list(value) -> bool:
    if isinstance(value, (list, tuple, np.ndarray)):
        return True
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            return isinstance(json.loads(value), list)
        except json.JSONDecodeError:
            return False
    return False


class Multilabel(EncoderTask):
    intervals = True
    detect_order = 30

    def detect(self, frame, config):
        """A label column of lists, or of labels joined by ``label_separator``."""
        values = label_values(frame, config)
        if not values:
            return None
        if any(_is_list(v) for v in values[:1000]):
            return f"column {config.label_column!r} holds lists of labels"
        separator = getattr(config, "label_separator", "")
        if separator and any(isinstance(v, str) and separator in v for v in values):
            return f"column {config.label_column!r} holds labels joined by {separator!r}"
        return None

    def parse_labels(self, labels, source, column, config):
        parsed = []
        for i, value in zip(labels.index, labels, strict=True):
            try:
                items = label_list(value, config.label_separator)
            except ValueError as error:
                raise DataError(f"{source}: row {int(i) + 1}, column {column!r}: {error}; task multilabel needs a "
                                "list of labels in every row") from None
            parsed.append(None if items is None else tuple(sorted(set(items))))
        return labels.__class__(parsed, index=labels.index, dtype=object)

    def label_info(self, labels):
        return {"labels": sorted({label for row in labels for label in row})}

    def train_info(self, train, info):
        """Each label's share of the training rows (the head's initial bias: :meth:`init_head`)."""
        from kftune.data.schema import LABEL

        hot = np.asarray(list(train[LABEL]), dtype=np.float64).reshape(len(train), len(info["labels"]))
        rates = hot.mean(axis=0) if len(hot) else np.zeros(len(info["labels"]))
        return {"label_rates": dict(zip(info["labels"], rates.tolist(), strict=True))}

    def init_head(self, model, info):
        """The output bias at each label's log-odds in the training split, so that training starts from the label
        rates rather than from 0.5 for every label. With few positives per label (5% on the bundled data) a head
        started at 0 spends its first steps pushing every logit down, through the encoder too, before any label
        is learnt (the prior initialisation of Lin et al., "Focal Loss for Dense Object Detection", 2017)."""
        import torch

        rates = info.get("label_rates")
        if not rates:
            return
        p = np.clip([rates[name] for name in info["labels"]], 1e-4, 1 - 1e-4)
        with torch.no_grad():
            for layer in output_layer(model, len(p)):
                layer.bias.copy_(torch.as_tensor(np.log(p / (1 - p)), dtype=layer.bias.dtype))

    def encode_labels(self, labels, info):
        index = {name: i for i, name in enumerate(info["labels"])}
        rows = []
        for row in labels:
            hot = [0.0] * len(index)
            for label in row:
                hot[index[label]] = 1.0
            rows.append(hot)
        return rows

    def label_feature(self, info):
        import datasets

        return datasets.Sequence(datasets.Value("float32"))

    def label_strata(self, labels):
        """The label set, with sets seen fewer than 3 times pooled into one stratum."""
        keys = labels.map(lambda row: "|".join(map(str, row)))
        counts = keys.value_counts()
        return keys.where(keys.map(counts) >= 3, "<rare>")

    def check_labels(self, labels, config, source):
        super().check_labels(labels, config, source)
        names = {label for row in labels for label in row}
        if len(names) < 2:
            raise DataError(f"{source}: column {config.label_column!r} holds {len(names)} distinct label(s) after "
                            "cleaning; multilabel needs at least 2")

    def label_distribution(self, stored, info):
        counts = np.asarray(stored, dtype=np.float64).sum(axis=0) if len(stored) else np.zeros(len(info["labels"]))
        return {name: int(c) for name, c in zip(info["labels"], counts, strict=True)}

    def head(self, info):
        names = info["labels"]
        return {"num_labels": len(names), "problem_type": "multi_label_classification",
                "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}

    def label_tensor(self, values, info):
        import torch

        return torch.tensor(values, dtype=torch.float32)

    def loss(self, model, batch, config):
        import torch

        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"])

    def thresholds(self, info) -> np.ndarray:
        return np.asarray(info.get("thresholds") or [0.5] * len(info["labels"]))

    def decisions(self, logits, info):
        return (sigmoid(np.asarray(logits, dtype=np.float64)) >= self.thresholds(info)).astype(np.int64)

    def scores(self, logits, labels, info, full=False):
        """At the model's thresholds; during training (no thresholds yet) at the thresholds that
        :meth:`after_training` would choose on these very examples, so that the validation score that picks the
        best epoch is the one the kept model will have (at a fixed 0.5, a model whose rare labels never reach 0.5
        scores 0 whatever it learnt)."""
        if "thresholds" not in info:
            info = self.after_training(logits, labels, info)
        scores = multilabel_scores(np.asarray(labels), self.decisions(logits, info), info["labels"], full)
        if full:
            scores["thresholds"] = dict(zip(info["labels"], self.thresholds(info).tolist(), strict=True))
        return scores

    def trivial_logits(self, logits, info):
        return np.full_like(logits, -30.0)  # no label (below every threshold)

    def after_training(self, logits, labels, info):
        return {**info, "thresholds": best_thresholds(sigmoid(np.asarray(logits, dtype=np.float64)),
                                                     np.asarray(labels, dtype=int))}

    def baselines(self, train, validation, test, info):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier
        from sklearn.pipeline import make_pipeline

        from kftune.data.schema import LABEL, TEXT

        names = info["labels"]
        y_train, y_validation, y_test = (np.asarray(split[LABEL], dtype=int) for split in (train, validation, test))
        sets, counts = np.unique(y_train, axis=0, return_counts=True)
        frequent = np.tile(sets[np.argmax(counts)], (len(y_test), 1))
        # Labels that never occur in train cannot be learned; one-vs-rest needs both values in every column.
        seen = (y_train.min(axis=0) == 0) & (y_train.max(axis=0) == 1)
        tfidf = np.zeros_like(y_test)
        model = make_pipeline(TfidfVectorizer(), OneVsRestClassifier(LogisticRegression(max_iter=1000)))
        model.fit(list(train[TEXT]), y_train[:, seen])
        # Its thresholds are chosen on validation as the model's are (best_thresholds): at 0.5, a logistic
        # regression on labels that 5 % of the texts carry predicts almost nothing (micro F1 0.02 on the bundled
        # tweets), a baseline any model beats.
        thresholds = np.asarray(best_thresholds(model.predict_proba(list(validation[TEXT])), y_validation[:, seen]))
        tfidf[:, seen] = (model.predict_proba(list(test[TEXT])) >= thresholds).astype(tfidf.dtype)
        tfidf[:, ~seen] = y_train[0, ~seen]
        return {"most_frequent_set": {**multilabel_scores(y_test, frequent, names, full=True), "predictions": frequent},
                "tfidf_ovr_logreg": {**multilabel_scores(y_test, tfidf, names, full=True), "predictions": tfidf}}

    def example_statistics(self, truth, predicted, info):
        """Per label: true, predicted, both (true positives); per example: whether the whole set is right and how
        many labels are wrong."""
        true, pred = np.asarray(truth, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
        return {"true": true, "pred": pred, "tp": true * pred, "exact": (true == pred).all(axis=1).astype(float),
                "wrong": (true != pred).sum(axis=1).astype(float), "examples": np.ones(len(true))}

    def scores_from_sums(self, sums, info):
        """As :func:`multilabel_scores`: micro F1, macro F1 over every label (0 where undefined), subset accuracy
        and Hamming loss."""
        tp, true, pred, n = sums["tp"], sums["true"], sums["pred"], sums["examples"]
        return {"f1_micro": ratio(2 * tp.sum(-1), true.sum(-1) + pred.sum(-1)),
                "f1_macro": ratio(2 * tp, true + pred).mean(-1), "subset_accuracy": ratio(sums["exact"], n),
                "hamming_loss": ratio(sums["wrong"], n * tp.shape[-1])}

    def report_sections(self, result):
        from kftune.reports import figure_html, new_figure, table_html

        names = list(result["model"]["per_label"])
        fig, ax = new_figure(max(6, 0.5 * len(names)), 3.5)
        x = np.arange(len(names))
        base = result["baselines"]["tfidf_ovr_logreg"]["per_label"]
        ax.bar(x - 0.2, [base[n]["f1"] for n in names], 0.4, label="TF-IDF + one-vs-rest")
        ax.bar(x + 0.2, [result["model"]["per_label"][n]["f1"] for n in names], 0.4, label="fine-tuned")
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.set_ylabel("F1")
        ax.set_ylim(0, 1)
        ax.legend()
        thresholds = result["model"].get("thresholds", {})
        rows = [(n, s["precision"], s["recall"], s["f1"], s["support"], thresholds.get(n, 0.5))
                for n, s in result["model"]["per_label"].items()]
        return ["<h2>Per label</h2>", table_html(["label", "precision", "recall", "f1", "support", "threshold"], rows),
                figure_html(fig)]

    def outputs(self, logits, info):
        names, thresholds = info["labels"], self.thresholds(info)
        probabilities = sigmoid(np.asarray(logits, dtype=np.float64))
        return [{"labels": [n for n, p, t in zip(names, row, thresholds, strict=True) if p >= t],
                 "probabilities": {n: float(p) for n, p in zip(names, row, strict=True)},
                 "thresholds": {n: float(t) for n, t in zip(names, thresholds, strict=True)}} for row in probabilities]

    def v2_outputs(self, logits, info):
        probabilities = sigmoid(np.asarray(logits, dtype=np.float64)).astype(np.float32)
        chosen = self.decisions(logits, info)
        labels = [json.dumps([n for n, c in zip(info["labels"], row, strict=True) if c]) for row in chosen]
        return [("labels", "BYTES", np.array(labels, dtype=np.object_)), ("predicted", "INT64", chosen),
                ("probabilities", "FP32", probabilities),
                ("thresholds", "FP32", self.thresholds(info).astype(np.float32)[None, :].repeat(len(chosen), 0))]


TASK = Multilabel(
    "multilabel",
    "a set of labels per text",
    defaults={"data": MULTILABEL_DATA, **ENCODER_DEFAULTS, "min_primary_score": 0.0,
              "metric_for_best_model": "f1_micro", "learning_rate": 1e-4,
              "num_train_epochs": 6, "per_device_train_batch_size": 16},
    search_space=encoder_search_space((3e-5, 3e-4)),
    metrics=METRICS,
    primary="f1_micro",
    lower_is_better=frozenset({"loss", "hamming_loss"}),
    best_metrics=("f1_micro", "f1_macro", "subset_accuracy", "loss"),
    baseline="tfidf_ovr_logreg",
    trivial="most_frequent_set",
    settings={"preprocess": (LabelList,)},
)
