"""Training modes through peft: LoRA (merged for export) and prompt tuning, on CPU with the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kftune.components.export.config import ExportConfig
from kftune.components.export.export import export_model
from kftune.data.schema import load_test_split
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
