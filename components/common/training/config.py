"""Training configuration: one typed dataclass, the knobs people know from Hugging Face."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from kftune.components.common.bundled import BUNDLED_MODEL
from kftune.components.common.errors import ConfigError

BEST_METRICS = ("f1_macro", "accuracy", "loss")
TRAINING_MODES = ("full", "freeze_encoder", "lora", "prompt_tuning")
MIXED_PRECISION = ("auto", "bf16", "fp16", "no")
TRAIN_ON = ("train", "train+validation")
# Options that change nothing about the optimisation: a checkpoint written under other values resumes.
RESUMABLE_CHANGES = (
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "checkpoint_dir",
    "max_restarts",
    "nproc_per_node",
    "per_device_eval_batch_size",
    "pruning",
)


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
    group_by_length: bool = False
    """Batch texts of similar length together: less padding, 1.5x the samples/s on a CPU, but it
    changes the optimisation, and it has not been shown to keep accuracy (docs/benchmarks.md)."""
    length_group_batches: int = 8
    """With ``group_by_length``: how many batches' worth of shuffled examples are sorted by length
    together. transformers uses 50, which lost ~0.8 points of test accuracy here over 3 seeds;
    8 lost ~0.4 against random batches."""
    mixed_precision: str = "auto"
    """``auto`` (bf16 where the hardware is fast at it, else fp16 with loss scaling on CUDA, else
    fp32), ``bf16``, ``fp16`` (CUDA only) or ``no``."""
    train_on: str = "train"
    """``train``, or ``train+validation`` (e.g. the final run after a search): then validation
    scores are measured on seen data, the last epoch is kept and early stopping is off."""
    metric_for_best_model: str = "f1_macro"
    early_stopping_patience: int = 2
    """Stop after this many epochs without improvement of the best metric (0: never)."""
    training_mode: str = "full"
    """``full`` fine-tuning, ``freeze_encoder`` (train the head only), ``lora`` or ``prompt_tuning`` (peft)."""
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_target_modules: str = ""
    """Comma-separated module names LoRA adapts ("": peft's default for the architecture)."""
    num_virtual_tokens: int = 20
    """Prompt tuning: number of trained virtual tokens prepended to every input."""
    nproc_per_node: int = 0
    """Processes per node: 0 = one per visible GPU, or 1 on CPU (2 threads beat 2x1 here)."""
    logging_steps: int = 50
    max_seq_length: int = 0
    """Truncate texts to this many tokens when training and validating (0: as preprocessed)."""
    max_steps: int = 0
    """Stop after this many optimizer steps in total (0: no limit). For smoke tests."""
    save_steps: int = 500
    """Checkpoint every this many optimizer steps (0: only at the end of each epoch)."""
    save_total_limit: int = 2
    """Checkpoints kept (newest first; 0 keeps all)."""
    checkpoint_dir: str = ""
    """Where checkpoints go ("": beside the output model). On a cluster: a PVC path that outlives the pod."""
    max_restarts: int = 0
    """torchrun restarts of failed workers; each restart resumes from the newest checkpoint."""
    pruning: str = ""
    """Set by a hyperparameter search: JSON naming the Optuna study and trial that rank 0 reports
    each epoch's validation score to, stopping the run when the study's pruner says so."""

    def validate(self) -> None:
        """Reject values outside their ranges before anything is launched."""
        positive = (
            "num_train_epochs",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "length_group_batches",
        )
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
                f"metric_for_best_model must be one of {', '.join(BEST_METRICS)}, got {self.metric_for_best_model!r}"
            )
        if self.train_on not in TRAIN_ON:
            raise ConfigError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {self.train_on!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(
                f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}"
            )
        if self.training_mode not in TRAINING_MODES:
            raise ConfigError(f"training_mode must be one of {', '.join(TRAINING_MODES)}, got {self.training_mode!r}")
        for name in ("lora_r", "lora_alpha", "num_virtual_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_seq_length == 1:
            raise ConfigError("max_seq_length must be 0 (as preprocessed) or >= 2")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        non_negative = (
            "nproc_per_node",
            "early_stopping_patience",
            "max_steps",
            "save_steps",
            "save_total_limit",
            "max_restarts",
            "max_seq_length",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def lora_targets(self) -> list[str] | None:
        return [name.strip() for name in self.lora_target_modules.split(",") if name.strip()] or None

    def resume_differences(self, saved: dict) -> list[str]:
        """Options that differ from those a checkpoint was written with (and forbid resuming it)."""
        mine = asdict(self)
        return sorted(k for k in mine if k not in RESUMABLE_CHANGES and saved.get(k) != mine[k])

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
