"""Tasks: what a run learns from the data, each one package, registered here and nowhere else.

A task is a package holding a :class:`~kftune.tasks.base.Task` (``TASK``): its data, model,
objective, scores, baselines, gate, export and answers (the hooks the stages ask, listed in
:mod:`kftune.tasks.base`; :class:`~kftune.tasks.encoder.EncoderTask` implements them for an
encoder with a head on text rows). No stage, pipeline or CLI module names a task.

The built-in tasks are :data:`BUILTIN`. A task of another package plugs in the same way, with one
registration: an entry point in the group ``kftune.tasks`` naming its ``Task`` object
(``sentence-pair = mypackage.pair:TASK`` in its ``pyproject.toml``), or, for a task that is not
installed (a test's), its module or ``module:attribute`` in ``$KFTUNE_TASKS`` (comma-separated).
Every process of a run (each pipeline step) reads both, so all of them know the same tasks.

``task`` is a run parameter of both pipelines and a flag of ``kftune run``/``tune``
(:class:`TaskChoice`). Settings whose best value depends on the task are declared with an ``auto``
default (``"auto"`` for text and choices, ``0`` for numbers, ``-1`` for gate thresholds); a
config with a ``task`` field replaces them with its task's value as it is built, so every stage,
the CLI and the search see the same resolved values and a value set explicitly always wins.

``task=auto`` (the default) is decided once, by preprocess, from the data (:func:`detect_task`);
later stages read it from the dataset artifact (:func:`resolve_task`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Literal

from kftune.errors import ConfigError, DataError
from kftune.settings.fields import setting
from kftune.tasks.base import Task

BUILTIN = (
    "kftune.tasks.classification",
    "kftune.tasks.causal_lm",
    "kftune.tasks.regression",
    "kftune.tasks.multilabel",
    "kftune.tasks.token_classification",
    "kftune.tasks.dpo",
)
"""The packages of the built-in tasks, in the order the surfaces list them."""
ENTRY_POINTS = "kftune.tasks"
PLUGINS_ENV = "KFTUNE_TASKS"
AUTO = "auto"

TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` (a second task of the same name is an error)."""
    if not isinstance(task, Task):
        raise TypeError(f"a task is a kftune.tasks.base.Task, not {type(task).__name__}")
    if task.name in TASKS and TASKS[task.name] is not task:
        raise ConfigError(f"two tasks are named {task.name!r}")
    TASKS[task.name] = task
    return task


def _load(reference: str) -> Task:
    """The task of ``module`` (its ``TASK``) or ``module:attribute``."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module.strip()), attribute.strip() or "TASK")


def _register_all() -> None:
    for module in BUILTIN:
        register(_load(module))
    for point in entry_points(group=ENTRY_POINTS):
        register(point.load())
    for reference in filter(None, os.environ.get(PLUGINS_ENV, "").split(",")):
        register(_load(reference))
    if sum(task.is_default for task in TASKS.values()) != 1:
        raise ConfigError("exactly one registered task must be the default (is_default)")


_register_all()
DEFAULT_TASK = next(name for name, task in TASKS.items() if task.is_default)
"""The task of a run that says nothing (no task, no data)."""
BUNDLED_TASK_DATA = {task.defaults["data"]: name for name, task in TASKS.items() if "data" in task.defaults}
"""The bundled data sets, and the task each is for."""
TASK_CHOICES = (AUTO, *TASKS)


def task_named(name: str) -> Task:
    """The registered task ``name``; a ConfigError naming the tasks there are."""
    if name not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]


def task_groups(stage: str) -> tuple[type, ...]:
    """The settings groups the registered tasks add to ``stage``'s config (each once, in registry order)."""
    groups: list[type] = []
    for task in TASKS.values():
        groups += [group for group in task.settings.get(stage, ()) if group not in groups]
    return tuple(groups)


def search_direction(metric: str) -> str:
    """The direction that improves validation ``metric``: ``minimize`` for a loss or an error (any task's
    ``lower_is_better``: loss, rmse, mae), ``maximize`` for the others."""
    errors = set().union(*(task.lower_is_better for task in TASKS.values()))
    return "minimize" if metric in errors else "maximize"


# --- the task setting ---------------------------------------------------------------------------------------------

@dataclass
class TaskChoice:
    """What the run learns. Settings left at ``auto`` take the task's defaults when a config with this group is
    built."""

    task: Literal[TASK_CHOICES] = setting(AUTO, per_task="summary")
    """auto (decided from the data; the bundled default data is the default task's), or one of the tasks."""

    def __post_init__(self) -> None:
        apply_task_defaults(self)


def apply_task_defaults(config) -> None:
    """Replace the values of ``config`` (a dataclass with a ``task`` field) still at their ``auto`` default by its
    task's. With ``task=auto`` nothing is replaced until the task is known (:func:`with_task`), but for the bundled
    data sets, whose task is known."""
    if config.task == AUTO and getattr(config, "data", None) in (AUTO, *BUNDLED_TASK_DATA):
        config.task = BUNDLED_TASK_DATA.get(config.data, DEFAULT_TASK)
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
        raise ConfigError(f"the data was prepared for task {task}, but task is {config.task}; preprocess it with "
                          f"task={config.task} or run with task={task}")
    return config


def resolve_task(config, artifact_dir: str | Path):
    """``config`` with the task of the dataset (or model) artifact in ``artifact_dir``: how every stage after
    preprocess learns the task that ``task=auto`` was decided to be."""
    from kftune.data.schema import dataset_task

    return with_task(config, dataset_task(artifact_dir).get("task", DEFAULT_TASK))


def check_task_settings(config) -> None:
    """The task's own checks of its settings (:meth:`~kftune.tasks.base.Task.check_settings`); and refuse a setting
    of another task's own group (e.g. token classification's ``tokens_column``) set to other than its default: it
    would be ignored."""
    if config.task == AUTO:
        return
    task_named(config.task).check_settings(config)
    mine = {group for groups in task_named(config.task).settings.values() for group in groups}
    for task in TASKS.values():
        for group in {group for groups in task.settings.values() for group in groups} - mine:
            if not isinstance(config, group):
                continue
            for f in dataclasses.fields(group):
                if getattr(config, f.name) != f.default:
                    raise ConfigError(f"{f.name} is a setting of task {task.name}; task {config.task} does not use "
                                      f"it (leave it at {f.default!r})")


# --- the data's task ----------------------------------------------------------------------------------------------

def detect_task(frame, config) -> tuple[str, str]:
    """The task ``frame`` (every column of the data, as read) is for, and why: the first task (by
    ``detect_order``) that recognises it, else the default task."""
    for task in sorted(TASKS.values(), key=lambda t: (t.is_default, t.detect_order)):
        reason = task.detect(frame, config)
        if reason:
            return task.name, reason
    return DEFAULT_TASK, f"no column {config.label_column!r} to tell otherwise"


def file_task(data: str) -> str | None:
    """The task whose data ``data`` is by its name alone (a CoNLL file: token classification), or None."""
    return next((task.name for task in TASKS.values() if task.reads_file(data)), None)


# --- an export's task ---------------------------------------------------------------------------------------------

EXPORT_REPORT = "export_report.json"
CONFIG_FILE = "config.json"


def export_task(model_dir: str | Path) -> str:
    """What the export in ``model_dir`` is for: its report's ``task``, else the task that recognises its
    ``config.json`` (a causal LM's architecture), else the default task (exports from before tasks had names)."""
    model_dir = Path(model_dir)
    try:
        report = json.loads((model_dir / EXPORT_REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = None
    name = report.get("task") if isinstance(report, dict) else None
    if name is None:
        try:
            model_config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            model_config = {}
        model_config = model_config if isinstance(model_config, dict) else {}
        name = next((task.name for task in TASKS.values() if task.recognises_export(model_config)), DEFAULT_TASK)
    if name not in TASKS:
        raise DataError(f"model {model_dir}: {EXPORT_REPORT} names task {name!r}; kftune serves and predicts with "
                        f"exports of the tasks {', '.join(TASKS)}")
    return name


def open_export(model_dir: str | Path, **options):
    """The export in ``model_dir``, opened for inference as its task says (options of other tasks are ignored)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DataError(f"model {model_dir}: no such directory; expected an export directory (the export step's "
                        "output)")
    return TASKS[export_task(model_dir)].open_export(model_dir, **options)
