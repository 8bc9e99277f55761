"""Shared fixtures: a tiny randomly initialised BERT built from the bundled config, small
slices of the bundled real data, and a preprocessed dataset / trained model made once; for
regression, multilabel and token classification a run on the synthetic data of
tests/task_data.py, made once for the modules that test the task and the ones that serve it."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from tests.causal_lm import make_tiny_causal_lm
from tests.task_data import distinct_toy_sentences, write_conll, write_multilabel_jsonl, write_regression_csv

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    # pytest-xdist workers share the CPUs: each (and the processes it starts: kfp tasks, torchrun) takes its share
    # of PyTorch's threads, where every worker taking all of them would oversubscribe the cores with spinning
    # OpenMP threads. Set before any test imports torch.
    from kftune.cpus import available_cpus

    os.environ["OMP_NUM_THREADS"] = str(max(1, available_cpus() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def make_tiny_model(path: Path, num_labels: int = 2) -> Path:
    """A 2-layer, 32-wide BERT with the bundled model's config and tokenizer, random weights."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kftune.data.bundled import bundled_model_dir

    source = bundled_model_dir()
    config = BertConfig.from_pretrained(source)
    config.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=128, num_labels=num_labels))
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def bundled_frame() -> pd.DataFrame:
    """The bundled Rotten Tomatoes reviews (text, label)."""
    from kftune.data.labelled import read_bundled

    return read_bundled()


@pytest.fixture(scope="session")
def small_frame(bundled_frame) -> pd.DataFrame:
    """300 real reviews, both classes, fixed sample."""
    return bundled_frame.sample(n=300, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory, small_frame) -> Path:
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    small_frame.to_csv(path, index=False)
    return path


def held_out_split(dataset: Path) -> Path:
    """Where the fixtures put a dataset artifact's test split artifact: ``test_split`` beside it."""
    return dataset.parent / "test_split"


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, small_csv, tiny_model) -> Path:
    """A preprocessed dataset artifact (train and validation) of the small slice, tokenized for the tiny model; its
    test split artifact is ``prepared_test``."""
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess

    out = tmp_path_factory.mktemp("prepared") / "dataset"
    preprocess(PreprocessConfig(data=str(small_csv), model=str(tiny_model), seed=1), out, held_out_split(out))
    return out


@pytest.fixture(scope="session")
def prepared_test(prepared) -> Path:
    """The test split artifact that preprocess wrote beside ``prepared``."""
    return held_out_split(prepared)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, prepared, tiny_model) -> Path:
    """The tiny model fine-tuned for 2 epochs in this process (no torchrun)."""
    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    out = tmp_path_factory.mktemp("trained") / "model"
    train(TrainConfig(model=str(tiny_model), num_train_epochs=2, learning_rate=1e-3,
                      per_device_train_batch_size=16, logging_steps=5), prepared, out)
    return out


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.fixture(scope="session")
def instructions_jsonl(tmp_path_factory) -> Path:
    """240 prompt/completion pairs from the bundled instruction data (real reviews), as JSON Lines."""
    from kftune.data.labelled import read_bundled_instructions

    path = tmp_path_factory.mktemp("instructions") / "reviews.jsonl"
    read_bundled_instructions().head(240).to_json(path, orient="records", lines=True)
    return path


@pytest.fixture(scope="session")
def prepared_lm(tmp_path_factory, instructions_jsonl, tiny_causal_lm) -> Path:
    """The instruction slice preprocessed for the tiny causal LM."""
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess

    out = tmp_path_factory.mktemp("prepared-lm") / "dataset"
    preprocess(PreprocessConfig(task="causal-lm", data=str(instructions_jsonl), model=str(tiny_causal_lm), seed=1),
               out, held_out_split(out))
    return out


@pytest.fixture(scope="session")
def prepared_lm_test(prepared_lm) -> Path:
    """The test split artifact that preprocess wrote beside ``prepared_lm``."""
    return held_out_split(prepared_lm)


@pytest.fixture(scope="session")
def trained_lm(tmp_path_factory, prepared_lm, tiny_causal_lm) -> Path:
    """The tiny causal LM fine-tuned with LoRA for 2 epochs in this process (no torchrun)."""
    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    out = tmp_path_factory.mktemp("trained-lm") / "model"
    train(TrainConfig(task="causal-lm", model=str(tiny_causal_lm), num_train_epochs=2, learning_rate=1e-2,
                      per_device_train_batch_size=16, logging_steps=5), prepared_lm, out)
    return out


def _task_run(work: Path, data: Path, model: Path) -> tuple:
    """``data`` preprocessed (task auto; the test split artifact to ``work/test_split``) and the tiny model trained on
    it for 6 epochs in this process."""
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    dataset = work / "dataset"
    stats = preprocess(PreprocessConfig(data=str(data), model=str(model), max_seq_length=32, seed=0), dataset,
                       held_out_split(dataset))
    config = TrainConfig(model=str(model), num_train_epochs=6, learning_rate=3e-3, per_device_train_batch_size=8,
                         warmup_ratio=0.1, early_stopping_patience=0, save_steps=0, logging_steps=20)
    history = train(config, dataset, work / "model")
    return work, dataset, stats, history


@pytest.fixture(scope="session")
def regression_run(tmp_path_factory, tiny_model) -> tuple:
    """(work dir, dataset, preprocess stats, training history): 500 cue texts with scores."""
    work = tmp_path_factory.mktemp("regression")
    return _task_run(work, write_regression_csv(work / "scores.csv", 500), tiny_model)


@pytest.fixture(scope="session")
def multilabel_run(tmp_path_factory, tiny_model) -> tuple:
    """(work dir, dataset, preprocess stats, training history): 500 cue texts with label sets (JSON Lines)."""
    work = tmp_path_factory.mktemp("multilabel")
    return _task_run(work, write_multilabel_jsonl(work / "tags.jsonl", 500), tiny_model)


@pytest.fixture(scope="session")
def token_run(tmp_path_factory, tiny_model) -> tuple:
    """A CoNLL file through preprocess (task auto), train, evaluate and export (to ``work/export``), with the tiny
    BERT: (work dir, preprocess stats, evaluation, export report)."""
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate
    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    work = tmp_path_factory.mktemp("token-run")
    tokens, tags = distinct_toy_sentences(400, seed=1)
    tags[0] = ["I-PER" if t == "B-PER" else t for t in tags[0]]  # IOB1: converted and counted
    data = write_conll(work / "people.conll", tokens, tags)
    stats = preprocess(PreprocessConfig(data=str(data), model=str(tiny_model), seed=1), work / "dataset",
                       work / "test_split")
    train(TrainConfig(task="token-classification", model=str(tiny_model), num_train_epochs=3, learning_rate=3e-3,
                      per_device_train_batch_size=16, logging_steps=10), work / "dataset", work / "model")
    result = evaluate(work / "model", work / "dataset", work / "test_split", EvaluateConfig())
    export = export_model(work / "model", work / "dataset", work / "test_split", work / "export",
                          ExportConfig(quantize_int8=False))
    return work, stats, result, export
