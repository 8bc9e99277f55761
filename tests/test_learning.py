"""Training learns: the fast tier's check that the loop fits something, not only that it runs.

A tiny randomly initialised BERT (tests/conftest.py's ``tiny_model``) is trained by the loop on
a small synthetic task with a rule to learn: each text is a few neutral words around one cue
word, and the label says whether the cue is a positive or a negative one. No word is a label by
itself in the vocabulary the model starts from (its weights are random), so a model that scores
above the majority class on texts it never saw has learnt the rule from the training split.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kftune.data.schema import LABEL, TEXT, load_splits, load_test_split
from kftune.inference.runners import predict_logits, torch_runner
from kftune.models.encoder import load_encoder_model
from kftune.training.config import TrainConfig
from kftune.training.loop import train

POSITIVE_CUES = ("wonderful", "superb", "delightful", "brilliant", "charming", "moving")
NEGATIVE_CUES = ("dreadful", "tedious", "awful", "boring", "clumsy", "bland")
NEUTRAL = ("the", "film", "plot", "actor", "scene", "story", "director", "movie", "cast", "script", "music",
           "ending", "camera", "dialogue", "character", "screen", "was", "and", "its", "with")


def cue_texts(rows: int, positive_share: float, seed: int, neutral: tuple[int, int] = (5, 9)) -> pd.DataFrame:
    """``rows`` distinct texts: ``neutral`` (5 to 9) neutral words with one cue word at a random place."""
    rng = random.Random(seed)
    texts: dict[str, str] = {}
    while len(texts) < rows:
        label = "positive" if rng.random() < positive_share else "negative"
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(*neutral))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE_CUES if label == "positive" else NEGATIVE_CUES))
        texts.setdefault(" ".join(words), label)
    return pd.DataFrame({TEXT: list(texts), LABEL: list(texts.values())})


def make_cue_dataset(work: Path, model: Path, rows: int = 400, positive_share: float = 0.65,
                     neutral: tuple[int, int] = (5, 9)) -> Path:
    """The cue task, preprocessed for ``model`` (stratified 80/10/10 split; the test split artifact beside the
    dataset's, in ``work/test_split``)."""
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess

    work.mkdir(parents=True, exist_ok=True)
    data = work / "cues.csv"
    cue_texts(rows, positive_share, seed=0, neutral=neutral).to_csv(data, index=False)
    out = work / "dataset"
    preprocess(PreprocessConfig(data=str(data), model=str(model), max_seq_length=32, seed=0), out,
               work / "test_split")
    return out


@pytest.fixture(scope="module")
def cue_dataset(tmp_path_factory, tiny_model) -> Path:
    return make_cue_dataset(tmp_path_factory.mktemp("cues"), tiny_model)


def test_training_beats_the_majority_class_on_held_out_texts(tmp_path, cue_dataset, tiny_model):
    splits, labels = load_splits(cue_dataset)
    test = load_test_split(cue_dataset.parent / "test_split")
    train_labels = np.asarray(splits["train"][LABEL])
    test_labels = np.asarray(test[LABEL])
    assert not set(test[TEXT]) & set(splits["train"][TEXT])  # held out: never trained on
    majority = np.bincount(train_labels).argmax()
    majority_accuracy = float((test_labels == majority).mean())
    assert 0.55 <= majority_accuracy <= 0.75  # the task is unbalanced: predicting one class scores well

    # before training the random model does no better than the majority class
    before = predict_logits(torch_runner(load_encoder_model(tiny_model)), test, 64).argmax(1)
    assert (before == test_labels).mean() <= majority_accuracy + 0.05

    config = TrainConfig(model=str(tiny_model), num_train_epochs=3, learning_rate=3e-3,
                         per_device_train_batch_size=8, warmup_ratio=0.1, early_stopping_patience=0,
                         save_steps=0, logging_steps=10)
    history = train(config, cue_dataset, tmp_path / "model")

    predictions = predict_logits(torch_runner(load_encoder_model(tmp_path / "model")), test, 64).argmax(1)
    accuracy = float((predictions == test_labels).mean())
    # well above the majority class (and the random start): the rule was learnt, not a class prior
    assert accuracy >= majority_accuracy + 0.2, (accuracy, majority_accuracy, history["epochs"])
    assert set(predictions.tolist()) == set(range(len(labels)))  # it predicts both classes
    losses = [e["train_loss"] for e in history["epochs"]]
    assert losses[-1] < losses[0], losses
