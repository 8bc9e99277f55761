"""The baselines on the default split: majority class, TF-IDF + logistic regression with
scikit-learn's defaults (what the evaluate step reports), and a tuned TF-IDF variant.

Preprocesses the bundled data as the default run does (seed 42, 80/10/10), fits each baseline on
the training split and scores it on the test split with the evaluate step's own functions
(``majority_baseline``, ``tfidf_baseline``). The tuned variant, word 1-2 grams, sublinear tf and
C=4, shows how much a little feature work adds; kftune reports the textbook default. Under a
minute on 2 CPU cores:

    .venv/bin/python bench/tfidf_baselines.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def tuned_tfidf(train_texts, train_labels, test_texts, seed: int = 0):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          LogisticRegression(C=4, max_iter=1000, random_state=seed))
    model.fit(list(train_texts), np.asarray(train_labels))
    return model.predict(list(test_texts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from sklearn.metrics import accuracy_score, f1_score

    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.data.schema import LABEL, TEXT, load_splits, load_test_split
    from kftune.tasks.classification import majority_baseline, tfidf_baseline

    with tempfile.TemporaryDirectory(prefix="kftune-bench-baselines-") as tmp:
        preprocess(PreprocessConfig(), Path(tmp) / "data", Path(tmp) / "test_split")
        train = load_splits(Path(tmp) / "data")[0]["train"]
        test = load_test_split(Path(tmp) / "test_split")  # what evaluate scores the baselines on
    y = np.asarray(test[LABEL])
    predictions = {
        "majority class": majority_baseline(train[LABEL], len(test)),
        "TF-IDF + logistic regression (scikit-learn defaults)": tfidf_baseline(train[TEXT], train[LABEL],
                                                                               test[TEXT])[0],
        "TF-IDF 1-2 grams, sublinear tf, C=4": tuned_tfidf(train[TEXT], train[LABEL], test[TEXT]),
    }
    rows = [{"baseline": name, "test_accuracy": float(accuracy_score(y, p)),
             "test_f1_macro": float(f1_score(y, p, average="macro"))} for name, p in predictions.items()]
    print(f"train {len(train)}, test {len(test)}\n\n| baseline | accuracy | macro F1 |\n|---|---|---|")
    for row in rows:
        print(f"| {row['baseline']} | {row['test_accuracy']:.4f} | {row['test_f1_macro']:.4f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
