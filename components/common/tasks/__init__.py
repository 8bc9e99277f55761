"""Tasks: what a run learns from the data, and the defaults each brings.

``task`` is a run parameter of both pipelines and a flag of ``kftune run``/``tune``
(:class:`~kftune.components.common.settings.TaskChoice`). Settings whose best value depends on
the task are declared with an ``auto`` default (``"auto"`` for text and choices, ``0`` for
numbers, ``-1`` for gate thresholds); a config that has a ``task`` field replaces them with
its task's value as it is built (``TaskChoice.__post_init__``), so every stage, the CLI and
the search see the same resolved values and a value set explicitly always wins.

- ``classification``: one label per text; an encoder with a classification head, evaluated
  against TF-IDF + logistic regression, exported to ONNX, served with KServe's V1/V2
  protocols.
- ``causal-lm``: instruction tuning of a causal language model on prompt/completion or chat
  data (loss on the completion only, LoRA by default), evaluated against the base model
  zero-shot on the same prompts, exported as a Hugging Face directory (merged weights and the
  adapter), served with OpenAI-compatible completions and chat completions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from kftune.components.common.bundled import BUNDLED_DATA, BUNDLED_MODEL, INSTRUCTION_DATA, LM_MODEL


@dataclass(frozen=True)
class Task:
    """One task: its name, what it is, and the values its ``auto`` settings take."""

    name: str
    summary: str
    defaults: dict = field(default_factory=dict)


TASKS: dict[str, Task] = {
    "classification": Task(
        "classification",
        "one label per text",
        defaults={
            "data": BUNDLED_DATA,
            "model": BUNDLED_MODEL,
            "max_seq_length": 128,
            "training_mode": "full",
            "metric_for_best_model": "f1_macro",
            "learning_rate": 1e-4,
            "num_train_epochs": 3,
            "per_device_train_batch_size": 32,
            "min_accuracy": 0.8,
        },
    ),
    "causal-lm": Task(
        "causal-lm",
        "instruction tuning of a causal language model",
        defaults={
            "data": INSTRUCTION_DATA,
            "model": LM_MODEL,
            "max_seq_length": 256,
            "training_mode": "lora",
            "metric_for_best_model": "loss",
            "learning_rate": 1e-3,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 8,
            "min_accuracy": 0.0,
        },
    ),
}


def task_named(name: str) -> Task:
    if name not in TASKS:
        from kftune.components.common.errors import ConfigError

        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]


def apply_task_defaults(config) -> None:
    """Replace the values of ``config`` (a dataclass with a ``task`` field) still at their ``auto`` default by its
    task's."""
    defaults = task_named(config.task).defaults
    for f in dataclasses.fields(config):
        if f.name in defaults and getattr(config, f.name) == f.default:
            setattr(config, f.name, defaults[f.name])
