"""ONNX export settings and the parity tolerance."""

from __future__ import annotations

from dataclasses import dataclass

from kftune.errors import ConfigError
from kftune.settings.fields import internal
from kftune.tasks import TaskChoice


@dataclass
class ExportConfig(TaskChoice):
    """Export settings (the task's format: an ONNX graph, or a Hugging Face directory) and the parity tolerance."""

    opset: int = 17
    """ONNX opset version."""
    atol: float = 1e-3
    """Largest allowed absolute difference between the trained model's logits and the export's on the test split (causal-lm: the base model + adapter against the merged model)."""  # noqa: E501
    quantize_int8: bool = True
    """Also export an int8 dynamically quantized ONNX model (model.int8.onnx) and report its accuracy (ONNX exports)."""  # noqa: E501
    batch_size: int = internal(64)

    def validate(self) -> None:
        if not 13 <= self.opset <= 21:
            raise ConfigError(f"opset must be in [13, 21], got {self.opset}")
        if self.atol <= 0:
            raise ConfigError(f"atol must be > 0, got {self.atol}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
