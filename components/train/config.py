"""Training configuration: one typed dataclass, the knobs people know from Hugging Face."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from kftune.components.common.bundled import BUNDLED_MODEL
from kftune.components.common.errors import ConfigError

BEST_METRICS = ("f1_macro", "accuracy", "loss")


@dataclass
class TrainConfig:
    """How to fine-tune. Names follow transformers' ``TrainingArguments`` where one exists."""

    model: str = BUNDLED_MODEL
    """Pretrained model: local Hugging Face directory, bundled name, or hub id."""
    learning_rate: float = 1e-4
    num_train_epochs: int = 3
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 128
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    layerwise_lr_decay: float = 1.0
    """Learning rate multiplier per layer going down from the head (1.0: the same everywhere)."""
    seed: int = 42
    group_by_length: bool = True
    """Batch texts of similar length together (less padding, faster; see README)."""
    bf16: str = "auto"
    """bf16 autocast: ``auto`` (on where the hardware has fast bf16), ``true`` or ``false``."""
    metric_for_best_model: str = "f1_macro"
    early_stopping_patience: int = 2
    """Stop after this many epochs without improvement of the best metric (0: never)."""
    freeze_encoder: bool = False
    """Train only the classification head (feature extraction)."""
    nproc_per_node: int = 0
    """Processes per node: 0 = one per visible GPU, or 1 on CPU (2 threads beat 2x1 here)."""
    logging_steps: int = 50
    max_steps: int = 0
    """Stop after this many optimizer steps in total (0: no limit). For smoke tests."""

    def validate(self) -> None:
        """Reject values outside their ranges before anything is launched."""
        positive = ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                    "gradient_accumulation_steps", "logging_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 < self.layerwise_lr_decay <= 1:
            raise ConfigError(f"layerwise_lr_decay must be in (0, 1], got {self.layerwise_lr_decay}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError("weight_decay and max_grad_norm must be >= 0")
        if self.metric_for_best_model not in BEST_METRICS:
            raise ConfigError(
                f"metric_for_best_model must be one of {', '.join(BEST_METRICS)}, "
                f"got {self.metric_for_best_model!r}"
            )
        if self.bf16 not in ("auto", "true", "false"):
            raise ConfigError(f"bf16 must be auto, true or false, got {self.bf16!r}")
        if self.nproc_per_node < 0 or self.early_stopping_patience < 0 or self.max_steps < 0:
            raise ConfigError("nproc_per_node, early_stopping_patience and max_steps must be >= 0")

    def to_json(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def from_json(cls, path: Path) -> TrainConfig:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        unknown = set(doc) - known
        if unknown:
            raise ConfigError(f"{path}: unknown training options {sorted(unknown)}")
        return cls(**doc)
