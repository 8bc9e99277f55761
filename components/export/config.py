"""ONNX export settings and the parity tolerance."""

from __future__ import annotations

from dataclasses import dataclass

from kftune.settings.fields import check_settings, internal, setting
from kftune.tasks import TaskChoice


@dataclass
class ExportConfig(TaskChoice):
    """Export settings (the task's format: an ONNX graph, or a Hugging Face directory) and the parity tolerance."""

    opset: int = setting(17, ge=13, le=21)
    """ONNX opset version."""
    atol: float = setting(1e-3, gt=0)
    """Largest allowed absolute difference between the trained model's logits and the export's on the test split (causal-lm: the trained base model + adapter, unmerged, against the exported merged model)."""  # noqa: E501
    quantize_int8: bool = True
    """Also export an int8 dynamically quantized ONNX model (model.int8.onnx) and report its accuracy (ONNX exports)."""  # noqa: E501
    batch_size: int = internal(64, ge=1)

    def validate(self) -> None:
        """Reject values outside their ranges."""
        check_settings(self)
