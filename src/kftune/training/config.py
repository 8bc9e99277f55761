"""Training settings, grouped as the training codebases group them (torchtitan's ``Optimizer``,
``Checkpoint``, ...; transformers' ``TrainingArguments`` names where one exists).

:class:`TrainConfig` is what the training loop reads: the groups combined, with flat attribute
access. :class:`Launch` (processes and nodes) is kept apart from the hyperparameters, as Flyte's
``Elastic`` keeps them apart. Each field is the one declaration of its setting: the KFP
signatures, CLI flags, search space and docs tables are derived from it
(:mod:`kftune.settings.fields`).
"""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

from kftune.errors import ConfigError
from kftune.settings.fields import (
    PretrainedModel,
    Seeding,
    TaskChoice,
    check_choices,
    internal,
    searchable,
)
from kftune.tasks import TASKS, EncoderTask

BestMetric = Literal["auto", "f1_macro", "accuracy", "loss", "rmse", "mae", "r2", "pearson", "spearman", "f1_micro",
                     "subset_accuracy", "f1", "precision", "recall"]
BEST_METRICS = typing.get_args(BestMetric)[1:]


@dataclass
class Optimization:
    """AdamW with linear warmup and decay."""

    learning_rate: float = searchable(0.0)
    """Peak AdamW learning rate (linear warmup, then linear decay); 0: the task's (classification: 0.0001, causal-lm: 0.001, regression: 0.0001, multilabel: 0.0003, token-classification: 0.0003)."""  # noqa: E501
    weight_decay: float = searchable(0.01)
    """AdamW weight decay (not applied to biases and LayerNorm)."""
    warmup_ratio: float = searchable(0.1)
    """Share of optimizer steps spent warming the learning rate up."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm (0: no clipping)."""
    layerwise_lr_decay: float = searchable(1.0)
    """Learning rate multiplier per layer going down from the head (1.0: the same everywhere)."""
    label_smoothing: float = searchable(0.0)
    """Label smoothing of the training loss: the target gives the true class 1 - label_smoothing and spreads the rest evenly over all classes (0: none; classification only)."""  # noqa: E501
    regression_loss: Literal["mse", "huber"] = "mse"
    """regression: the training loss on the normalised target, mean squared error or Huber (less swayed by outliers)."""  # noqa: E501


@dataclass
class Batching:
    """Epochs, batches, sequence lengths and precision."""

    num_train_epochs: int = searchable(0)
    """Passes over the training split; 0: the task's (classification: 3, causal-lm: 1, regression: 3, multilabel: 6, token-classification: 6)."""  # noqa: E501
    per_device_train_batch_size: int = searchable(0)
    """Examples per training process per micro-batch; 0: the task's (classification: 32, causal-lm: 8, regression: 32, multilabel: 16, token-classification: 16)."""  # noqa: E501
    per_device_eval_batch_size: int = 128
    """Examples per process per validation batch."""
    gradient_accumulation_steps: int = searchable(1)
    """Micro-batches per optimizer step."""
    group_by_length: bool = False
    """Batch texts of similar length together: less padding, 1.5x the samples/s on a CPU, but it changes the optimisation and has not been shown to keep accuracy (docs/benchmarks.md)."""  # noqa: E501
    length_group_batches: int = 8
    """With group_by_length: how many batches' worth of shuffled examples are sorted by length together (transformers uses 50)."""  # noqa: E501
    max_train_length: int = searchable(0)
    """Truncate texts further to this many tokens when training and validating (0: as preprocessed, at max_seq_length)."""  # noqa: E501
    max_steps: int = 0
    """Stop after this many optimizer steps in total (0: no limit); for smoke runs."""
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
    """auto: bf16 where the hardware is fast at it, else fp16 with loss scaling on CUDA, else fp32; fp16 needs CUDA."""
    logging_steps: int = 50
    """Log the training loss every this many optimizer steps."""
    packing: bool = True
    """Compute no padding (the same result as padded batches): causal-lm concatenates a micro-batch's examples into one sequence, attention and positions kept within each example; encoder tasks (BERT-family models) run the token-wise layers on the real tokens only and attention per text (other encoders pad). Off: pad to the longest."""  # noqa: E501
    ddp_gradient_sync: Literal["overlap", "after_backward"] = "overlap"
    """ddp: average gradients in buckets during the backward pass (overlap, fastest), or after every rank's backward pass has finished and the ranks agreed that none ran out of memory (after_backward: an out-of-memory error in the backward pass is recovered too, at the cost of the overlap). The loop switches to after_backward after a first out-of-memory error."""  # noqa: E501
    sharding: Literal["ddp", "fsdp"] = "ddp"
    """How several processes share the work: ddp (each holds the whole model) or fsdp (causal-lm; FSDP2 shards each decoder layer's weights, gradients and optimizer state over them, for a model that does not fit one GPU)."""  # noqa: E501
    gradient_checkpointing: bool = False
    """causal-lm: recompute activations in the backward pass instead of keeping them (less memory, about a third more compute)."""  # noqa: E501


@dataclass
class ModelSelection:
    """Which epoch's model is kept, and when training stops early."""

    metric_for_best_model: BestMetric = "auto"
    """Validation metric that picks the best epoch (and that a search optimises): the task's scores or loss; auto: the task's (classification: f1_macro, causal-lm: loss, regression: rmse, multilabel: f1_micro, token-classification: f1; a causal LM has only loss)."""  # noqa: E501
    early_stopping_patience: int = 2
    """Stop after this many epochs without improvement of the best metric (0: never)."""
    train_on: Literal["train", "train+validation"] = "train"
    """train, or train+validation (e.g. the final run after a search): validation scores are then on seen data, the last epoch is kept and early stopping is off."""  # noqa: E501


@dataclass
class Adapters:
    """What is trained: the whole model, the head, or peft adapters."""

    training_mode: Literal["auto", "full", "freeze_encoder", "lora", "qlora", "prompt_tuning"] = "auto"
    """full fine-tuning, freeze_encoder (train the head only; classification), lora, qlora (LoRA on a 4-bit base, bitsandbytes on CUDA; causal-lm) or prompt_tuning (peft; classification); auto: the task's (classification: full, causal-lm: lora, regression: full, multilabel: full, token-classification: full)."""  # noqa: E501
    lora_r: int = searchable(8)
    """LoRA rank (training_mode lora)."""
    lora_alpha: int = searchable(16)
    """LoRA alpha; the update is scaled by alpha / r."""
    lora_dropout: float = searchable(0.1)
    """Dropout on the LoRA branch."""
    lora_target_modules: str = ""
    """Comma-separated module names LoRA adapts (empty: classification peft's default for the architecture, causal-lm all linear layers)."""  # noqa: E501
    num_virtual_tokens: int = 20
    """Prompt tuning: trained virtual tokens prepended to every input."""


@dataclass
class Checkpointing:
    """Atomic checkpoints that a restarted run resumes from."""

    save_steps: int = 500
    """Checkpoint every this many optimizer steps, and at each epoch end (0: epoch ends only)."""
    save_total_limit: int = 2
    """Checkpoints kept, newest first (0 keeps all)."""
    checkpoint_dir: str = internal("")
    """Where checkpoints go ("": beside the output model); on a cluster a PVC path that outlives the pod."""


@dataclass
class TrainConfig(
    Checkpointing, Adapters, ModelSelection, Batching, Optimization, PretrainedModel, Seeding, TaskChoice
):
    """How to fine-tune: every group the training loop reads."""

    pruning: str = internal("")
    """Set by a hyperparameter search: JSON naming the Optuna study and trial that rank 0 reports
    each epoch's validation score to, stopping the run when the study's pruner says so."""

    def validate(self) -> None:
        """Reject values outside their ranges before anything is launched. Under ``task=auto`` (the task comes from
        the dataset) the ranges are checked on the encoder tasks' defaults, the task's own rules once it is known."""
        check_choices(self)
        if self.task == "auto":
            auto_metric = self.metric_for_best_model not in ("auto", "loss", *TASKS["classification"].best_metrics)
            replace(self, task="classification", metric_for_best_model="auto" if auto_metric else
                    self.metric_for_best_model).validate()
            return
        task = TASKS[self.task]
        if self.metric_for_best_model not in task.best_metrics:
            raise ConfigError(f"metric_for_best_model {self.metric_for_best_model} is not a score of task {self.task}; "
                              f"it selects by one of: {', '.join(task.best_metrics)}")
        positive = (
            "num_train_epochs",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "length_group_batches",
            "lora_r",
            "lora_alpha",
            "num_virtual_tokens",
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
        if self.max_train_length == 1:
            raise ConfigError("max_train_length must be 0 (as preprocessed) or >= 2")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.label_smoothing and self.task != "classification":
            raise ConfigError(f"label_smoothing is for task classification, not {self.task}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not isinstance(task, EncoderTask):  # a causal LM: no encoder to freeze or prompt, and it may shard
            if self.training_mode in ("freeze_encoder", "prompt_tuning"):
                raise ConfigError(f"training_mode {self.training_mode} is for task classification; causal-lm trains "
                                  "full, lora or qlora")
        else:
            if self.training_mode == "qlora":
                raise ConfigError("training_mode qlora is for task causal-lm (a 4-bit base model under LoRA)")
            if self.sharding == "fsdp":
                raise ConfigError("sharding fsdp is for task causal-lm; a classifier fits one device (ddp)")
        for name in ("early_stopping_patience", "max_steps", "save_steps", "save_total_limit", "max_train_length"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def lora_targets(self) -> list[str] | None:
        return [name.strip() for name in self.lora_target_modules.split(",") if name.strip()] or None

    def resume_differences(self, saved: dict) -> list[str]:
        """Options that differ from those a checkpoint was written with (and forbid resuming it).

        Logging, checkpointing, evaluation batch size and pruning change nothing about the
        optimisation: a checkpoint written under other values resumes.
        """
        resumable = {f.name for f in fields(Checkpointing)} | {"logging_steps", "per_device_eval_batch_size", "pruning"}
        mine = asdict(self)
        return sorted(k for k in mine if k not in resumable and saved.get(k) != mine[k])

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


@dataclass
class Launch:
    """How many processes and nodes train: launch settings, apart from the hyperparameters."""

    nproc_per_node: int = 0
    """Training processes per node: 0 = one per visible GPU, or 1 on CPU (2 threads beat 2x1 processes there)."""
    max_restarts: int = 0
    """torchrun restarts of failed workers; each restart resumes from the newest checkpoint."""
    num_nodes: int = 1
    """Nodes to train on; above 1 the train step runs a Kubeflow Trainer TrainJob on the cluster."""
    gpus_per_node: int = 1
    """GPUs per node of that TrainJob (num_nodes > 1)."""

    def validate(self) -> None:
        for name in ("nproc_per_node", "max_restarts", "gpus_per_node"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.num_nodes < 1:
            raise ConfigError(f"num_nodes must be >= 1, got {self.num_nodes}")
