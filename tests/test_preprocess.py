"""Preprocessing logic: cleaning rules, labels, split, augmentation, the artifact."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kftune.components.preprocess.config import PreprocessConfig
from kftune.components.preprocess.preprocess import augment_texts, preprocess, split_dataset
from kftune.components.preprocess.preprocess import prepare as prepare_rows
from kftune.data.schema import LabelMap, load_splits, load_test_split
from kftune.data.text import clean_text
from kftune.errors import ConfigError, DataError
from kftune.tasks import task_named

CLASSIFICATION = task_named("classification")


def clean_dataset(frame, config):
    """The classification task's cleaning rules (the default task's, which reads labelled text rows)."""
    return CLASSIFICATION.clean(frame, config)


def make_label_map(labels) -> LabelMap:
    return LabelMap(tuple(CLASSIFICATION.label_info(labels)["labels"]))


def stratified_split(frame, config):
    return split_dataset(frame, config, lambda part: CLASSIFICATION.strata(part, {}), CLASSIFICATION.strata_checked)


def test_clean_text_normalises():
    assert clean_text("  <b>Caf\u0065\u0301</b>&amp;\n\tco  ") == "Caf\u00e9 & co"
    assert clean_text("<br/><p></p>") == ""


def test_cleaning_rules_count_what_they_remove():
    frame = pd.DataFrame({
        "text": ["Great movie!", "great movie", "Great movie!", None, "<i></i>", "ok", "x" * 50,
                 "Loved it", "loved it.", "Dull", "Fine film", "Another"],
        "label": ["pos", "pos", "pos", "neg", "neg", "neg", "pos",
                  "pos", "neg", None, "pos", "neg"],
    })
    cleaned, removed = clean_dataset(frame, PreprocessConfig(min_chars=3, max_chars=40))
    assert removed["missing_text"] == 1
    assert removed["missing_label"] == 1
    assert removed["empty_after_cleaning"] == 1
    assert removed["too_short"] == 1       # "ok"
    assert removed["too_long"] == 1        # 50 x's
    assert removed["conflicting_labels"] == 2   # "Loved it"/"loved it." disagree: both go
    assert removed["exact_duplicate"] == 1      # second "Great movie!"
    assert removed["normalised_duplicate"] == 1  # "great movie"
    assert cleaned["text"].tolist() == ["Great movie!", "Fine film", "Another"]


def test_integer_labels_stay_numeric_and_sorted():
    frame = pd.DataFrame({"text": [f"t{i}" * 2 for i in range(6)], "label": [10, 2, 2.0, "10", 1, 1]})
    cleaned, _ = clean_dataset(frame, PreprocessConfig())
    labels = make_label_map(cleaned["label"])
    assert labels.names == ("1", "2", "10")
    assert labels.id2label == {0: "1", 1: "2", 2: "10"}


def test_string_labels_sorted_alphabetically(tmp_path):
    labels = make_label_map(pd.Series(["sports", "arts", "news", "arts"]))
    assert labels.label2id == {"arts": 0, "news": 1, "sports": 2}
    labels.save(tmp_path / "labels.json")
    assert LabelMap.load(tmp_path / "labels.json") == labels


def test_split_is_stratified_seeded_and_disjoint(small_frame):
    frame, _ = clean_dataset(small_frame, PreprocessConfig())
    frame["label"] = frame["label"].map({"negative": 0, "positive": 1})
    a = stratified_split(frame, PreprocessConfig(seed=3))
    b = stratified_split(frame, PreprocessConfig(seed=3))
    c = stratified_split(frame, PreprocessConfig(seed=4))
    assert all(a[s]["text"].tolist() == b[s]["text"].tolist() for s in a)
    assert a["test"]["text"].tolist() != c["test"]["text"].tolist()
    texts = [set(a[s]["text"]) for s in ("train", "validation", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert sum(len(a[s]) for s in a) == len(frame)
    share = frame["label"].mean()
    for split in a.values():
        assert abs(split["label"].mean() - share) < 0.05


def test_augmentation_is_seeded_and_noisy():
    texts = ["the movie was really quite good overall", "a dull and boring film with no plot"]
    a = augment_texts(texts, copies=2, probability=0.2, seed=7)
    assert a == augment_texts(texts, copies=2, probability=0.2, seed=7)
    assert a != augment_texts(texts, copies=2, probability=0.2, seed=8)
    assert a and all(noisy != texts[i] for i, noisy in a)


def test_preprocess_writes_complete_artifacts(tmp_path, small_csv, tiny_model):
    out, held = tmp_path / "dataset", tmp_path / "test_split"
    stats = preprocess(PreprocessConfig(data=str(small_csv), model=str(tiny_model), augment_copies=1), out, held)
    splits, labels = load_splits(out)
    test = load_test_split(held)
    assert labels.names == ("negative", "positive")
    assert set(splits) == {"train", "validation"} and not (out / "splits" / "test").exists()
    assert len(splits["validation"]) == len(test) == 30 and [p.name for p in held.iterdir()] == ["test"]
    assert test.column_names == splits["validation"].column_names
    assert stats["augmented_rows"] > 0
    # augmentation only touches train: val/test hold original texts only
    assert len(splits["train"]) == stats["rows_used"] - 60 + stats["augmented_rows"]
    assert {"input_ids", "attention_mask", "length", "text", "label"} <= set(splits["train"].column_names)
    assert max(splits["train"]["length"]) <= 128
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert json.loads((out / "stats.json").read_text())["rows_read"] == 300
    assert not list(tmp_path.glob(".*.partial-*"))


def test_the_two_artifacts_need_two_paths(tmp_path, small_csv, tiny_model):
    with pytest.raises(ConfigError, match="two artifacts; give them two paths"):
        preprocess(PreprocessConfig(data=str(small_csv), model=str(tiny_model)), tmp_path / "d", tmp_path / "d")


def test_augmentation_off_by_default(prepared):
    stats = json.loads((prepared / "stats.json").read_text())
    assert stats["augmented_rows"] == 0
    sizes = stats["split_sizes"]
    assert (sizes["validation"], sizes["test"]) == (30, 30)
    assert sizes["train"] == stats["rows_used"] - 60 == stats["rows_clean"] - 60


def test_multiclass_integer_labels_reach_the_artifact(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"body": [f"text number {i} " + "word " * int(rng.integers(1, 9)) for i in range(90)],
                          "topic": [i % 3 for i in range(90)]})
    path = tmp_path / "topics.parquet"
    frame.to_parquet(path)
    preprocess(PreprocessConfig(data=str(path), text_column="body", label_column="topic",
                                model=str(tiny_model)), tmp_path / "out", tmp_path / "test_split")
    _, labels = load_splits(tmp_path / "out")
    assert labels.names == ("0", "1", "2")
    assert set(load_test_split(tmp_path / "test_split")["label"]) == {0, 1, 2}


def _write(tmp_path, texts, labels):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return str(path)


def test_empty_after_cleaning_is_an_error(tmp_path):
    data = _write(tmp_path, ["<p></p>", "   ", "<br>"], ["a", "b", "a"])
    with pytest.raises(DataError, match="no rows left after cleaning"):
        prepare_rows(PreprocessConfig(data=data))


def test_single_class_is_an_error(tmp_path):
    data = _write(tmp_path, [f"review {i}" for i in range(40)], ["pos"] * 40)
    with pytest.raises(DataError, match=r"column 'label' has a single class \('pos'\)"):
        prepare_rows(PreprocessConfig(data=data))


def test_class_too_small_for_stratification(tmp_path):
    data = _write(tmp_path, [f"review {i}" for i in range(42)], ["pos"] * 40 + ["neg"] * 2)
    with pytest.raises(DataError, match="class 'neg' has 2 row"):
        prepare_rows(PreprocessConfig(data=data))


def test_too_few_rows_for_the_split(tmp_path):
    data = _write(tmp_path, [f"review {i}" for i in range(12)], ["pos", "neg", "mid"] * 4)
    with pytest.raises(DataError, match="too few for a stratified split"):
        prepare_rows(PreprocessConfig(data=data))


def test_bad_config_is_rejected():
    with pytest.raises(ConfigError, match="validation_fraction"):
        PreprocessConfig(validation_fraction=0.5, test_fraction=0.5).validate()
    with pytest.raises(ConfigError, match="min_chars"):
        PreprocessConfig(min_chars=10, max_chars=5).validate()


def test_failed_preprocess_leaves_no_artifact(tmp_path, tiny_model):
    data = _write(tmp_path, [f"review {i}" for i in range(40)], ["pos"] * 40)
    with pytest.raises(DataError):
        preprocess(PreprocessConfig(data=data, model=str(tiny_model)), tmp_path / "out", tmp_path / "test_split")
    assert not (tmp_path / "out").exists() and not (tmp_path / "test_split").exists()
    assert not list(tmp_path.glob(".*.partial-*"))
