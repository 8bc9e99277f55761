"""Tasks: what a run learns from the data, each one module, registered here and nowhere else.

``task`` is a run parameter of both pipelines and a flag of ``kftune run``/``tune``
(:class:`~kftune.settings.fields.TaskChoice`). Settings whose best value depends on
the task are declared with an ``auto`` default (``"auto"`` for text and choices, ``0`` for
numbers, ``-1`` for gate thresholds); a config that has a ``task`` field replaces them with
its task's value as it is built (``TaskChoice.__post_init__``), so every stage, the CLI and
the search see the same resolved values and a value set explicitly always wins.

``task=auto`` (the default) is decided from the data (:func:`detect_task`): the bundled default
data is classification; otherwise preprocess reads the data and says in the log and in the
data report what it found; later stages read the task from the dataset artifact.

Each task is a module of this package (see :mod:`~kftune.tasks.base` for the
hooks the stages call); adding one means writing its module and adding it to :data:`TASKS`.
"""

from __future__ import annotations

import dataclasses

from kftune.tasks import causal_lm, classification, multilabel, regression, token_classification
from kftune.tasks.base import EncoderTask, Task

TASKS: dict[str, Task] = {t.name: t for t in (
    classification.TASK,
    causal_lm.TASK,
    regression.TASK,
    multilabel.TASK,
    token_classification.TASK,
)}

AUTO = "auto"
BUNDLED_TASK_DATA = {task.defaults["data"]: name for name, task in TASKS.items() if "data" in task.defaults}
"""The bundled data sets, and the task each is for."""


def task_named(name: str) -> Task:
    if name not in TASKS:
        from kftune.errors import ConfigError

        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]


def search_direction(metric: str) -> str:
    """The direction that improves validation ``metric``: ``minimize`` for a loss or an error (any task's
    ``lower_is_better``: loss, rmse, mae), ``maximize`` for the others."""
    errors = set().union(*(task.lower_is_better for task in TASKS.values()))
    return "minimize" if metric in errors else "maximize"


def encoder_task(name: str) -> EncoderTask:
    task = task_named(name)
    if not isinstance(task, EncoderTask):
        raise TypeError(f"task {name} does not train an encoder with a head")
    return task


def apply_task_defaults(config) -> None:
    """Replace the values of ``config`` (a dataclass with a ``task`` field) still at their ``auto`` default by its
    task's. With ``task=auto`` nothing is replaced until the task is known (:func:`with_task`)."""
    if config.task == AUTO and getattr(config, "data", None) in (AUTO, *BUNDLED_TASK_DATA):
        config.task = BUNDLED_TASK_DATA.get(config.data, "classification")  # data=auto: the bundled default
    if config.task == AUTO:
        return
    defaults = task_named(config.task).defaults
    for f in dataclasses.fields(config):
        if f.name in defaults and getattr(config, f.name) == f.default:
            setattr(config, f.name, defaults[f.name])


def with_task(config, task: str):
    """``config`` with ``task`` (where it was ``auto``) and that task's defaults; checks an explicit task agrees."""
    if config.task == AUTO:
        return dataclasses.replace(config, task=task)
    if config.task != task:
        from kftune.errors import ConfigError

        raise ConfigError(f"the data was prepared for task {task}, but task is {config.task}; preprocess it with "
                          f"task={config.task} or run with task={task}")
    return config


def trained_task_info(model_dir, model, data_info: dict) -> dict:
    """The task's part of a trained model: its ``task.json``, or for a model without one (trained before tasks had
    one, or built elsewhere) the dataset's, with the labels of the model's ``id2label``."""
    from pathlib import Path

    from kftune.data.schema import TASK_FILE, dataset_task

    if (Path(model_dir) / TASK_FILE).is_file():
        return dataset_task(model_dir)
    if "labels" not in data_info:
        return data_info
    return {**data_info, "labels": [model.config.id2label[i] for i in range(model.config.num_labels)]}


TOKEN_FILE_SUFFIXES = (".conll", ".iob", ".bio")
INSTRUCTION_COLUMNS = ("prompt", "completion", "messages", "instruction", "output")


def detect_task(frame, label_column: str, label_separator: str = "", tokens_column: str = "tokens",
                tags_column: str = "tags") -> tuple[str, str]:
    """The task ``frame`` (every column of the data) is for, and why: per-token tags (``tokens_column`` and
    ``tags_column``) are token classification;
    instruction columns without a label column causal-lm; list-valued labels (or ones joined by
    ``label_separator``) multilabel; non-integer numbers with 10 or more distinct values regression; anything else
    (integer or text labels) classification."""
    import json

    import numpy as np
    import pandas as pd

    from kftune.tasks.regression import as_float

    columns = set(map(str, frame.columns))
    if {tokens_column, tags_column} <= columns and "token-classification" in TASKS:
        return "token-classification", f"columns {tokens_column} and {tags_column}"
    if label_column not in columns:
        found = [c for c in INSTRUCTION_COLUMNS if c in columns]
        if found:
            return "causal-lm", f"instruction column(s) {', '.join(found)} and no column {label_column!r}"
        return "classification", f"no column {label_column!r} to tell otherwise"
    values = [v for v in frame[label_column] if isinstance(v, (list, tuple, np.ndarray)) or not pd.isna(v)]
    if not values:
        return "classification", f"column {label_column!r} is empty"

    def is_list(v) -> bool:
        if isinstance(v, (list, tuple, np.ndarray)):
            return True
        if isinstance(v, str) and v.strip().startswith("["):
            try:
                return isinstance(json.loads(v), list)
            except json.JSONDecodeError:
                return False
        return False

    if any(is_list(v) for v in values[:1000]):
        return "multilabel", f"column {label_column!r} holds lists of labels"
    if label_separator and any(isinstance(v, str) and label_separator in v for v in values):
        return "multilabel", f"column {label_column!r} holds labels joined by {label_separator!r}"
    numbers = [as_float(v) for v in values]
    if all(n is not None for n in numbers):
        distinct = len(set(numbers))
        if any(not float(n).is_integer() for n in numbers) and distinct >= 10:
            return "regression", f"column {label_column!r} holds non-integer numbers ({distinct} distinct values)"
        return "classification", f"column {label_column!r} holds {distinct} distinct number(s), integers or few"
    return "classification", f"column {label_column!r} holds text labels"
