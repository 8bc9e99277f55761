"""The evaluation gate: what the fine-tuned model must reach on the test split to be published and deployed."""

from __future__ import annotations

from dataclasses import dataclass

from kftune.components.common.errors import ConfigError
from kftune.components.common.settings import internal


@dataclass
class EvaluateConfig:
    """Thresholds of the gate, and inference settings."""

    min_accuracy: float = 0.8
    """Gate: the model's test accuracy must be at least this."""
    min_f1_macro: float = 0.0
    """Gate: the model's test macro F1 must be at least this."""
    min_gain_over_baseline: float = 0.0
    """Gate: the model's test accuracy must exceed the TF-IDF baseline's by at least this."""
    batch_size: int = internal(128)

    def validate(self) -> None:
        for name in ("min_accuracy", "min_f1_macro"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not -1 <= self.min_gain_over_baseline <= 1:
            raise ConfigError(f"min_gain_over_baseline must be in [-1, 1], got {self.min_gain_over_baseline}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
