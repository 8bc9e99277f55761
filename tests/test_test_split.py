"""The test split decides nothing: preprocess writes it as its own artifact, which only evaluate and export are
given. Training, search (trials, and the copies that Katib and TrainJob stage) and pretraining get the dataset
artifact, which holds train and validation alone; asking it for the test split is an error."""

from __future__ import annotations

import shutil

import pytest

from kftune.data.schema import TRAINING_SPLITS, load_splits, load_test_split
from kftune.errors import DataError


def test_the_dataset_artifact_holds_no_test_example(prepared, prepared_test):
    test = load_test_split(prepared_test)
    splits, _ = load_splits(prepared)
    assert len(test) == 30 and set(splits) == set(TRAINING_SPLITS)
    assert not [p for p in prepared.rglob("*") if "test" in p.name]
    with pytest.raises(DataError, match="test_split artifact, which only evaluate and export are given"):
        splits["test"]
    assert not set(test["text"]) & {t for split in splits.values() for t in split["text"]}
    # nor anywhere in its files' bytes (the splits keep their texts as UTF-8, as the validation texts show)
    stored = b"".join(p.read_bytes() for p in prepared.rglob("*") if p.is_file())
    long_texts = [t for t in test["text"] if len(t) >= 40]
    assert long_texts and not [t for t in long_texts if t.encode() in stored]
    assert all(t.encode() in stored for t in splits["validation"]["text"])
    # the two artifacts are not to be mixed up
    with pytest.raises(DataError, match="that is the test split artifact"):
        load_splits(prepared_test)
    with pytest.raises(DataError, match="that is the dataset artifact"):
        load_test_split(prepared)


def test_a_dataset_that_still_holds_a_test_split_is_refused(tmp_path, prepared, prepared_test):
    """An artifact of the old layout (test beside train and validation in splits/) would show training the test
    split: no stage takes it."""
    import datasets

    old = tmp_path / "old"
    shutil.copytree(prepared, old, ignore=shutil.ignore_patterns("splits"))
    splits, _ = load_splits(prepared)
    datasets.DatasetDict({**splits, "test": load_test_split(prepared_test)}).save_to_disk(str(old / "splits"))
    with pytest.raises(DataError, match="hold a test split beside train and validation"):
        load_splits(old)


def test_staged_and_pretraining_data_hold_no_test_split(tmp_path, prepared, prepared_test, tiny_model):
    """What Katib trials and TrainJob workers train from is a copy of the dataset artifact; pretraining reads its
    train split's texts."""
    from kftune.components.pretrain.config import PretrainConfig
    from kftune.components.pretrain.pretrain import gather_texts
    from kftune.training.config import TrainConfig
    from kftune.training.staging import stage_run_dir

    mount = tmp_path / "volume"
    mount.mkdir()
    stage_run_dir(TrainConfig(model=str(tiny_model)), prepared, mount / "run", mount)
    staged, _ = load_splits(mount / "run" / "dataset")
    assert set(staged) == set(TRAINING_SPLITS)
    assert not [p for p in (mount / "run").rglob("*") if "test" in p.name]

    texts, sources = gather_texts(PretrainConfig(pretrain=True), prepared)
    assert sources == {"train_split": len(staged["train"])}
    assert not set(texts) & set(load_test_split(prepared_test)["text"])


def test_train_and_tune_run_without_the_test_split_then_evaluate_and_export_read_it(tmp_path, small_csv, tiny_model):
    """Train and a search trial run while the test split is nowhere they could be given or guess it; evaluate and
    export, given both artifacts, score and check parity on it."""
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate
    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.components.tune.trial import COMPLETE, run_trial
    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    dataset, test_split = tmp_path / "run" / "dataset", tmp_path / "run" / "test_split"
    stats = preprocess(PreprocessConfig(data=str(small_csv), model=str(tiny_model), seed=2), dataset, test_split)
    sealed = shutil.move(test_split, tmp_path / "sealed")
    config = TrainConfig(model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=32, max_steps=4,
                         learning_rate=1e-3)
    history = train(config, dataset, tmp_path / "model")
    trial = run_trial(config, {"learning_rate": 3e-3}, dataset, tmp_path / "trial", number=1)
    assert history["best_epoch"] == 1 and trial["state"] == COMPLETE, trial["error"]
    assert not test_split.exists()

    result = evaluate(tmp_path / "model", dataset, sealed, EvaluateConfig(min_gain_over_baseline=-1))
    report = export_model(tmp_path / "model", dataset, sealed, tmp_path / "onnx", ExportConfig(quantize_int8=False))
    assert result["test_size"] == report["parity"]["examples"] == stats["split_sizes"]["test"] == 30
    with pytest.raises(DataError, match="that is the dataset artifact"):
        evaluate(tmp_path / "model", dataset, dataset, EvaluateConfig())
