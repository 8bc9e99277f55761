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
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

from kftune.errors import ConfigError
from kftune.settings.fields import check_settings, internal, setting
from kftune.settings.groups import PretrainedModel, Seeding
from kftune.tasks import AUTO, DEFAULT_TASK, TASKS, TaskChoice, check_task_settings, task_groups

BEST_METRICS = tuple(dict.fromkeys(metric for task in TASKS.values() for metric in task.best_metrics))
"""Every validation score a registered task can pick its best epoch by."""
BestMetric = Literal[(AUTO, *BEST_METRICS)]


@dataclass
class Optimization:
    """AdamW with linear warmup and decay."""

    learning_rate: float = setting(0.0, searchable=True, gt=0, lt=1, auto=True)
    """Peak AdamW learning rate (linear warmup, then linear decay); 0: the task's."""
    weight_decay: float = setting(0.01, searchable=True, ge=0)
    """AdamW weight decay (not applied to biases and LayerNorm)."""
    warmup_ratio: float = setting(0.1, searchable=True, ge=0, lt=1)
    """Share of optimizer steps spent warming the learning rate up."""
    max_grad_norm: float = setting(1.0, ge=0)
    """Gradients are clipped to this global norm (0: no clipping)."""
    layerwise_lr_decay: float = setting(1.0, searchable=True, gt=0, le=1)
    """Learning rate multiplier per layer going down from the head (1.0: the same everywhere)."""


@dataclass
class Batching:
    """Epochs, batches, sequence lengths and precision."""

    num_train_epochs: int = setting(0, searchable=True, ge=1, auto=True)
    """Passes over the training split; 0: the task's."""
    per_device_train_batch_size: int = setting(0, searchable=True, ge=1, auto=True)
    """Examples per training process per micro-batch; 0: the task's."""
    per_device_eval_batch_size: int = setting(128, ge=1)
    """Examples per process per validation batch."""
    gradient_accumulation_steps: int = setting(1, searchable=True, ge=1)
    """Micro-batches per optimizer step."""
    group_by_length: bool = False
    """Batch texts of similar length together: less padding (1.14x the real tokens instead of 1.93x on the bundled data, bench/padding.py), but it changes the optimisation, so random batches stay the default."""  # noqa: E501
    length_group_batches: int = setting(8, ge=1)
    """With group_by_length: how many batches' worth of shuffled examples are sorted by length together (transformers uses 50)."""  # noqa: E501
    max_train_length: int = setting(0, searchable=True, ge=2, auto=True)
    """Truncate texts further to this many tokens when training and validating (0: as preprocessed, at max_seq_length)."""  # noqa: E501
    max_steps: int = setting(0, ge=0)
    """Stop after this many optimizer steps in total (0: no limit); for smoke runs."""
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
    """auto: bf16 where the hardware is fast at it, else fp16 with loss scaling on CUDA, else fp32; fp16 needs CUDA."""
    logging_steps: int = setting(50, ge=1)
    """Log the training loss every this many optimizer steps."""
    packing: bool = True
    """Compute no padding (the same result as padded batches): a causal LM concatenates a micro-batch's examples into one sequence, attention and positions kept within each example; an encoder (BERT-family models) runs the token-wise layers on the real tokens only and attention per text (other encoders pad). Off: pad to the longest."""  # noqa: E501
    ddp_gradient_sync: Literal["overlap", "after_backward"] = "overlap"
    """ddp: average gradients in buckets during the backward pass (overlap, fastest), or after every rank's backward pass has finished and the ranks agreed that none ran out of memory (after_backward: an out-of-memory error in the backward pass is recovered too, at the cost of the overlap). The loop switches to after_backward after a first out-of-memory error."""  # noqa: E501
    sharding: Literal["ddp", "fsdp"] = "ddp"
    """How several processes share the work: ddp (each holds the whole model) or fsdp (FSDP2 shards each decoder layer's weights, gradients and optimizer state over them, for a causal LM that does not fit one GPU)."""  # noqa: E501
    gradient_checkpointing: bool = False
    """Causal LMs: recompute activations in the backward pass instead of keeping them (less memory, about a third more compute)."""  # noqa: E501


@dataclass
class ModelSelection:
    """Which epoch's model is kept, and when training stops early."""

    metric_for_best_model: BestMetric = "auto"
    """Validation metric that picks the best epoch (and that a search optimises): one of the task's validation scores, or loss; auto: the task's."""  # noqa: E501
    early_stopping_patience: int = setting(2, ge=0)
    """Stop after this many epochs without improvement of the best metric (0: never), counted only once the model has beaten the task's trivial answer on validation (better on at least one score that answer has and worse on none; the answer: the most frequent training class, the training mean, no label, the O tag), so a run that has not learnt yet is not stopped; an epoch that does not beat it is logged."""  # noqa: E501
    train_on: Literal["train", "train+validation"] = "train"
    """train, or train+validation (e.g. the final run after a search): validation scores are then on seen data, the last epoch is kept and early stopping is off."""  # noqa: E501


@dataclass
class Adapters:
    """What is trained: the whole model, the head, or peft adapters."""

    training_mode: Literal["auto", "full", "freeze_encoder", "lora", "qlora", "prompt_tuning"] = "auto"
    """full fine-tuning, freeze_encoder (train an encoder's head only), lora, qlora (LoRA on a 4-bit base, bitsandbytes on CUDA; causal LMs) or prompt_tuning (peft; encoders); each task says which it trains with; auto: the task's."""  # noqa: E501
    lora_r: int = setting(8, searchable=True, ge=1)
    """LoRA rank (training_mode lora)."""
    lora_alpha: int = setting(16, searchable=True, ge=1)
    """LoRA alpha; the update is scaled by alpha / r."""
    lora_dropout: float = setting(0.1, searchable=True, ge=0, lt=1)
    """Dropout on the LoRA branch."""
    lora_target_modules: str = ""
    """Comma-separated module names LoRA adapts (empty: for an encoder peft's default for the architecture, for a causal LM all linear layers)."""  # noqa: E501
    num_virtual_tokens: int = setting(20, ge=1)
    """Prompt tuning: trained virtual tokens prepended to every input."""


@dataclass
class Checkpointing:
    """Atomic checkpoints that a restarted run resumes from."""

    save_steps: int = setting(500, ge=0)
    """Checkpoint every this many optimizer steps, and at each epoch end (0: epoch ends only)."""
    save_total_limit: int = setting(2, ge=0)
    """Checkpoints kept, newest first (0 keeps all)."""
    checkpoint_dir: str = internal("")
    """Where checkpoints go ("": beside the output model); on a cluster a PVC path that outlives the pod."""


@dataclass
class TrainConfig(
    Checkpointing, Adapters, ModelSelection, Batching, *task_groups("train"), Optimization, PretrainedModel, Seeding,
    TaskChoice,
):
    """How to fine-tune: every group the training loop reads (with the tasks' own training settings)."""

    pruning: str = internal("")
    """Set by a hyperparameter search: JSON naming the Optuna study and trial that rank 0 reports
    each epoch's validation score to, stopping the run when the study's pruner says so."""

    def validate(self) -> None:
        """Reject values outside their ranges (:func:`check_settings`) and settings that do not go together before
        anything is launched. Under ``task=auto`` (the task comes from the dataset) the ranges are checked on the
        default task's values, the task's own rules once it is known."""
        check_settings(self)
        if self.task == AUTO:
            default = TASKS[DEFAULT_TASK]
            metric = self.metric_for_best_model
            replace(self, task=DEFAULT_TASK, metric_for_best_model=metric if metric in (AUTO, *default.best_metrics)
                    else AUTO).validate()
            return
        task = TASKS[self.task]
        check_task_settings(self)
        if self.metric_for_best_model not in task.best_metrics:
            raise ConfigError(f"metric_for_best_model {self.metric_for_best_model} is not a score of task {self.task}; "
                              f"it selects by one of: {', '.join(task.best_metrics)}")
        for name, allowed in (("training_mode", task.training_modes), ("sharding", task.shardings)):
            value = getattr(self, name)
            if value not in allowed:
                others = [t.name for t in TASKS.values() if value in getattr(t, name + "s")]
                raise ConfigError(f"{name} {value} is for task{'s' * (len(others) > 1)} {', '.join(others)}; task "
                                  f"{self.task} trains with {name} {' or '.join(allowed)}")
        if self.training_mode == "qlora" and self.sharding == "fsdp":
            # FSDP2 would replace bitsandbytes' 4-bit parameters by shards of their bytes, without the quantisation
            # state (scales, shape, dtype) that each holds: the model it trains would not be the quantised base.
            raise ConfigError("training_mode qlora cannot be sharded with sharding fsdp (the 4-bit weights would lose "
                              "their quantisation state); use sharding ddp, or training_mode lora with fsdp")

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

    nproc_per_node: int = setting(0, ge=0)
    """Training processes per node: 0 = one per visible GPU, or 1 on CPU (2 threads beat 2x1 processes there)."""
    max_restarts: int = setting(0, ge=0)
    """torchrun restarts of failed workers; each restart resumes from the newest checkpoint."""
    num_nodes: int = setting(1, ge=1)
    """Nodes to train on; above 1 the train step runs a Kubeflow Trainer TrainJob on the cluster."""
    gpus_per_node: int = setting(1, ge=0)
    """GPUs per node of that TrainJob (num_nodes > 1)."""

    def validate(self) -> None:
        """Reject values outside their ranges."""
        check_settings(self)
