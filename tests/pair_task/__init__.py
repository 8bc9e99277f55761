"""A task defined outside kftune, to prove the plug-in: ``sentence-pair``, a score for a pair of texts.

It is one package; its one registration is ``KFTUNE_TASKS=tests.pair_task`` in the environment of
every kftune process (an installed package would name it under the ``kftune.tasks`` entry points).
Nothing else in kftune knows it. What it brings:

- its data: two text columns (``text_column`` and its own setting ``text_pair_column``) and a
  numeric label, read, cleaned and tokenized as a pair (the encoder's text-row path, with two
  text fields);
- its model, objective, scores and serving outputs: a regression head on the pair (kftune's
  regression task's, reused as any package could);
- its baselines: the training mean, and TF-IDF + ridge on both texts.

:func:`pair_frame` makes learnable data: the score counts the praise words of the first text
minus the complaint words of the second, so a model must read both texts of a pair.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kftune.data.schema import LABEL, TEXT
from kftune.tasks.regression import Regression, regression_scores

PAIR = "text_pair"
PRAISE = ("wonderful", "superb", "moving", "clever")
COMPLAINTS = ("dull", "awful", "boring", "clumsy")
FILLER = ("the", "film", "plot", "actor", "scene", "story", "was", "and", "its", "with", "a", "of")


@dataclass
class PairColumn:
    """Where sentence-pair data keeps the second text of each pair."""

    text_pair_column: str = PAIR
    """Column holding the second text of each pair (the first is text_column's)."""


class SentencePair(Regression):
    text_fields = (TEXT, PAIR)
    detect_order = 5

    def input_columns(self, config):
        return {TEXT: config.text_column, PAIR: config.text_pair_column}

    def detect(self, frame, config):
        pair = getattr(config, "text_pair_column", PAIR)
        return f"column {pair!r} (the second text of each pair)" if pair in set(map(str, frame.columns)) else None

    def baselines(self, train, validation, test, info):
        from kftune.tasks.regression import tfidf_ridge

        def both(split):
            return [f"{a} || {b}" for a, b in zip(split[TEXT], split[PAIR], strict=True)]

        y_train, y_test = np.asarray(train[LABEL], dtype=np.float64), np.asarray(test[LABEL], dtype=np.float64)
        mean, ridge = np.full(len(y_test), y_train.mean()), tfidf_ridge(both(train), y_train, both(test))
        return {"mean": {**regression_scores(y_test, mean, full=True), "predictions": mean},
                "tfidf_ridge": {**regression_scores(y_test, ridge, full=True), "predictions": ridge}}


TASK = SentencePair(
    "sentence-pair",
    "a score for a pair of texts (a test task)",
    defaults={"max_seq_length": 48, "training_mode": "full", "metric_for_best_model": "rmse",
              "learning_rate": 3e-3, "num_train_epochs": 4, "per_device_train_batch_size": 16},
    search_space={"learning_rate": {"low": 1e-3, "high": 5e-3, "log": True}},
    metrics=("rmse", "mae", "r2", "pearson", "spearman"),
    primary="rmse",
    lower_is_better=frozenset({"loss", "rmse", "mae"}),
    best_metrics=("rmse", "mae", "loss"),
    baseline="tfidf_ridge",
    settings={"preprocess": (PairColumn,), "predict": (PairColumn,)},
)


def pair_frame(rows: int, seed: int = 0, pair_column: str = PAIR) -> pd.DataFrame:
    """Pairs whose score is the praise words in the first text minus the complaint words in the second."""
    rng = random.Random(seed)
    pairs = {}
    while len(pairs) < rows:
        praise, complaints = rng.randint(0, 2), rng.randint(0, 2)
        first = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        second = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        for word in rng.sample(PRAISE, praise):
            first.insert(rng.randint(0, len(first)), word)
        for word in rng.sample(COMPLAINTS, complaints):
            second.insert(rng.randint(0, len(second)), word)
        pairs.setdefault((" ".join(first), " ".join(second)), round(praise - complaints + rng.uniform(-0.1, 0.1), 3))
    return pd.DataFrame({TEXT: [a for a, _ in pairs], pair_column: [b for _, b in pairs], LABEL: list(pairs.values())})
