"""Training modes through peft: LoRA (merged for export) and prompt tuning, on CPU with the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kftune.components.export.config import ExportConfig
from kftune.components.export.export import export_model
from kftune.data.schema import load_splits, load_test_split
from kftune.inference.runners import predict_logits, torch_runner
from kftune.models.encoder import is_adapter, load_encoder_model
from kftune.training.config import TrainConfig
from kftune.training.loop import HISTORY_FILE, train


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory, prepared, tiny_model):
    out = tmp_path_factory.mktemp("lora") / "model"
    config = TrainConfig(model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=16,
                         learning_rate=5e-3, training_mode="lora", lora_r=4, lora_alpha=8,
                         lora_target_modules="query,value")
    train(config, prepared, out)
    return out


def test_lora_trains_adapters_and_writes_a_merged_plain_model(lora_model, tiny_model):
    assert not is_adapter(lora_model)
    before, after = load_file(tiny_model / "model.safetensors"), load_file(lora_model / "model.safetensors")
    assert before.keys() == after.keys()  # merged: no lora_A / lora_B tensors left
    query = "bert.encoder.layer.0.attention.self.query.weight"
    key = "bert.encoder.layer.0.attention.self.key.weight"
    assert not torch.equal(before[query], after[query])  # LoRA update merged into the adapted module
    assert torch.equal(before[key], after[key])  # modules LoRA does not target are untouched
    history = json.loads((lora_model / HISTORY_FILE).read_text())
    assert history["training_mode"] == "lora"


def test_lora_trains_few_parameters(tiny_model):
    from kftune.models.encoder import build_encoder_model, trainable_parameters

    config = TrainConfig(training_mode="lora", lora_r=4)
    model = build_encoder_model(config, {"num_labels": 2, "id2label": {0: "a", 1: "b"}, "label2id": {"a": 0, "b": 1}},
                             str(tiny_model))
    trainable, total = trainable_parameters(model)
    assert 0 < trainable < 0.05 * total


def test_lora_onnx_export_matches_the_merged_model(tmp_path, lora_model, prepared, prepared_test):
    report = export_model(lora_model, prepared, prepared_test, tmp_path / "onnx", ExportConfig(quantize_int8=False))
    assert report["parity"]["prediction_mismatches"] == 0
    # and independently: ONNX predictions equal those of the merged PyTorch model on the test split
    import onnxruntime as ort

    from kftune.inference.runners import onnx_runner

    test = load_test_split(prepared_test)
    merged = predict_logits(torch_runner(load_encoder_model(lora_model)), test, 16)
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    exported = predict_logits(onnx_runner(session), test, 16)
    assert (merged.argmax(1) == exported.argmax(1)).all()
    np.testing.assert_allclose(merged, exported, atol=1e-4)


def test_prompt_tuning_trains_virtual_tokens_and_exports(tmp_path, prepared, prepared_test, tiny_model):
    out = tmp_path / "model"
    config = TrainConfig(model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=16,
                         learning_rate=1e-2, training_mode="prompt_tuning", num_virtual_tokens=4)
    train(config, prepared, out)
    assert is_adapter(out)
    model = load_encoder_model(out)
    prompt = model.prompt_encoder["default"].embedding.weight
    assert prompt.shape == (4, 32)
    test = load_test_split(prepared_test)
    logits = predict_logits(torch_runner(model), test, 16)
    assert logits.shape == (len(test), 2) and np.isfinite(logits).all()
    report = export_model(out, prepared, prepared_test, tmp_path / "onnx", ExportConfig(quantize_int8=False))
    assert report["parity"]["prediction_mismatches"] == 0


def wide_tiny_model(path) -> object:
    """A 2-layer, 32-wide BERT with random weights drawn wider than BERT's (initializer_range 0.2, not 0.02) and no
    dropout. Frozen, as prompt tuning keeps it, BERT's own narrow draw passes a cue word on to the first position
    too faintly for a few hundred steps to pick it up (and dropout buries it); this one does not."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kftune.data.bundled import bundled_model_dir

    config = BertConfig.from_pretrained(bundled_model_dir())
    config.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       max_position_embeddings=128, num_labels=2, initializer_range=0.2, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0))  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(bundled_model_dir()).save_pretrained(path)
    return path


def held_out_accuracy(model, split) -> float:
    predictions = predict_logits(torch_runner(model), split, 64).argmax(1)
    return float((predictions == np.asarray(split["label"])).mean())


def test_prompt_tuning_learns_a_cue_training_only_the_virtual_tokens_and_the_head(tmp_path, monkeypatch):
    """The cue task of tests/test_learning.py (short texts: 1 to 3 neutral words around the cue) learnt by prompt
    tuning: the loss falls, held-out texts are classified well above the majority class, and of all the weights
    only the virtual tokens and the classification head (peft's trained copy of it) moved; the encoder is the
    random one it started from. Without its trained virtual tokens the trained head does much worse."""
    from kftune.training import encoder_recipe
    from tests.test_learning import make_cue_dataset

    model_dir = wide_tiny_model(tmp_path / "tiny")
    dataset = make_cue_dataset(tmp_path / "cues", model_dir, neutral=(1, 3))
    initial: dict[str, torch.Tensor] = {}
    build = encoder_recipe.build_encoder_model

    def build_and_keep_the_initial_weights(*args, **kwargs):
        built = build(*args, **kwargs)
        initial.update({name: p.detach().clone() for name, p in built.named_parameters()})
        return built

    monkeypatch.setattr(encoder_recipe, "build_encoder_model", build_and_keep_the_initial_weights)
    out = tmp_path / "model"
    config = TrainConfig(model=str(model_dir), training_mode="prompt_tuning", num_virtual_tokens=16, learning_rate=0.1,
                         num_train_epochs=6, per_device_train_batch_size=8, warmup_ratio=0.0,
                         early_stopping_patience=0, save_steps=0)  # fmt: skip
    history = train(config, dataset, out)

    train_losses = [e["train_loss"] for e in history["epochs"]]
    val_losses = [e["val_loss"] for e in history["epochs"]]
    assert train_losses[-1] < 0.5 * train_losses[0] and val_losses[-1] < 0.5 * val_losses[0], history["epochs"]

    train_split, test = load_splits(dataset)[0]["train"], load_test_split(tmp_path / "cues" / "test_split")
    train_labels, test_labels = np.asarray(train_split["label"]), np.asarray(test["label"])
    majority = float((test_labels == np.bincount(train_labels).argmax()).mean())
    trained = load_encoder_model(out)
    accuracy = held_out_accuracy(trained, test)
    assert accuracy >= majority + 0.15, (accuracy, majority)

    weights = dict(trained.named_parameters())
    assert set(weights) == set(initial)
    moved = {name for name, before in initial.items() if not torch.equal(before, weights[name])}
    assert moved == {"prompt_encoder.default.embedding.weight", "base_model.classifier.modules_to_save.default.weight",
                     "base_model.classifier.modules_to_save.default.bias"}  # fmt: skip
    # the base model written beside the adapter is the random model it started from, tensor for tensor
    base, start = load_file(out / "base_model" / "model.safetensors"), load_file(model_dir / "model.safetensors")
    assert base.keys() == start.keys() and all(torch.equal(base[name], start[name]) for name in start)

    with torch.no_grad():  # the trained head with the virtual tokens as they started
        trained.prompt_encoder["default"].embedding.weight.copy_(initial["prompt_encoder.default.embedding.weight"])
    assert held_out_accuracy(trained, test) <= accuracy - 0.15


@pytest.mark.parametrize("run", ["regression_run", "multilabel_run", "token_run"])
def test_prompt_tuning_trains_every_encoder_task_and_exports_with_parity(request, run, tiny_model, tmp_path):
    """Prompt tuning with each new task's head (peft's SEQ_CLS for scores and label sets, TOKEN_CLS for tags): the
    virtual tokens and the head train, the adapter reloads, and the ONNX export matches it."""
    from kftune.data.schema import dataset_task
    from kftune.tasks import task_named

    work = request.getfixturevalue(run)[0]
    dataset = work / "dataset"
    task = dataset_task(dataset)["task"]
    out = tmp_path / "model"
    train(TrainConfig(task=task, model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=16,
                      learning_rate=1e-2, training_mode="prompt_tuning", num_virtual_tokens=4), dataset, out)
    assert is_adapter(out)
    model = load_encoder_model(out, task_named(task))
    prompt = model.prompt_encoder["default"].embedding.weight
    assert prompt.shape == (4, 32)
    test = load_test_split(work / "test_split")
    logits = predict_logits(torch_runner(model), test, 16)
    assert len(logits) == len(test) and np.isfinite(logits).all()
    if logits.ndim == 3:  # per-token logits: the text's positions, not the virtual tokens before them
        assert logits.shape[1] == max(len(ids) for ids in test["input_ids"])
    report = export_model(out, dataset, work / "test_split", tmp_path / "onnx", ExportConfig(quantize_int8=False))
    assert report["task"] == task and report["parity"]["max_abs_logit_diff"] < 1e-4, report["parity"]
