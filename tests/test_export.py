"""ONNX export: dynamic axes, parity with PyTorch, int8, and failure leaving nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kftune.components.export import export as export_module
from kftune.components.export.config import ExportConfig
from kftune.components.export.export import export_model
from kftune.errors import KftuneError


def test_export_with_parity_and_int8(tmp_path, trained, prepared, prepared_test):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    out = tmp_path / "onnx"
    report = export_model(trained, prepared, prepared_test, out, ExportConfig())
    assert report["parity"]["prediction_mismatches"] == 0
    assert report["parity"]["max_abs_logit_diff"] <= 1e-3
    assert report["parity"]["examples"] == 30
    assert {"onnx", "onnx_int8"} <= set(report["accuracy"])
    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json", "config.json", "labels.json", "export_report.json",
                 "README.md"):
        assert (out / name).is_file(), name
    assert json.loads((out / "export_report.json").read_text())["files"]["onnx"] == "model.onnx"
    # the token limit texts were truncated at, for a server to do the same
    stats = json.loads((prepared / "stats.json").read_text())
    assert report["max_seq_length"] == stats["config"]["max_seq_length"]

    # dynamic batch and sequence axes: other shapes than the traced ones run
    session = ort.InferenceSession(str(out / "model.onnx"))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    for texts in (["one"], ["a", "b c d e f g h i j k l m n o p", "q"]):
        enc = tokenizer(texts, padding=True, return_tensors="np")
        feed = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
        assert session.run(None, feed)[0].shape == (len(texts), 2)


def test_parity_failure_writes_nothing(tmp_path, trained, prepared, prepared_test, monkeypatch):
    real_runner = export_module.onnx_runner

    def skewed(session):
        run = real_runner(session)
        return lambda arrays: run(arrays) + np.array([0.0, 0.5], dtype=np.float32)

    monkeypatch.setattr(export_module, "onnx_runner", skewed)
    with pytest.raises(KftuneError, match=r"fails the parity check .* max \|logit difference\| 5\.000e-01"):
        export_model(trained, prepared, prepared_test, tmp_path / "onnx", ExportConfig(quantize_int8=False))
    assert not (tmp_path / "onnx").exists()
    assert not list(tmp_path.iterdir())
