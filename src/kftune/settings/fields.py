"""Settings, declared once: a typed dataclass field with an attribute docstring.

A setting is a field of a settings dataclass. Its type is ``str``, ``int``, ``float``, ``bool``,
``dict`` or ``list`` (what KFP takes), or a ``Literal[...]`` of strings for a choice (a ``str`` on
every surface, its values listed in the description and checked by :func:`check_choices`); its
attribute docstring is its description. Field markers:

- ``searchable()``: a setting a hyperparameter search may vary;
- ``internal()``: a field that code sets (a checkpoint path, a pruning target) and no surface shows;
- ``per_task(attribute)``: the description ends with each task's value of that attribute of the task
  (its primary metric, its summary); settings whose ``auto`` value comes from the task
  (:attr:`kftune.tasks.base.Task.defaults`) get each task's value without a marker.

Dataclasses group settings (torchtitan's ``Optimizer``, ``Checkpoint``, ...) and combine by
inheritance, so a stage's config keeps flat attribute access (``config.learning_rate``). The
surfaces (KFP signatures, CLI flags, README tables, the search space) read them through
:func:`kftune.settings.catalog.settings_of`, which adds what the task registry knows; this module
knows no task, so the tasks can declare their own groups with it.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Literal

from docstring_parser import parse_from_object

from kftune.errors import ConfigError

TYPES = (str, int, float, bool, dict, list)  # what KFP parameters take
RENAMED = {"min_accuracy": "min_primary_score"}
"""Settings that were renamed, and their names now: a flag or run parameter of the old name is a one-line error
naming the new one."""


def internal(default: Any) -> Any:
    """A dataclass field that code sets and no surface (signature, flag, form, table) shows."""
    return dataclasses.field(default=default, metadata={"internal": True})


def searchable(default: Any) -> Any:
    """A setting that a hyperparameter search may vary (the search space takes its type)."""
    return dataclasses.field(default=default, metadata={"searchable": True})


def per_task(default: Any, attribute: str) -> Any:
    """A setting whose description ends with each registered task's ``attribute`` (e.g. its primary metric)."""
    return dataclasses.field(default=default, metadata={"per_task": attribute})


def fold(text: str | None) -> str:
    """``text`` on one line, runs of white space folded."""
    return " ".join((text or "").split())


@functools.cache
def attribute_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of ``cls`` and its bases (the nearest declaration wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update({p.arg_name: fold(p.description) for p in parse_from_object(klass).params})
    return docs


def choices_of(hint) -> tuple[str, ...] | None:
    """The values of a ``Literal`` type hint, else None."""
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def check_choices(config) -> None:
    """Refuse a choice setting whose value is not one of its ``Literal`` values."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        choices = choices_of(hints[f.name])
        value = getattr(config, f.name)
        if choices and value not in choices:
            raise ConfigError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")


def settings_from(cls: type, values: dict, **overrides):
    """An instance of ``cls`` from the flat ``values`` it declares (others are ignored).

    Numbers are brought to the declared type: KFP hands collected integers over as floats.
    """
    hints = typing.get_type_hints(cls)
    chosen = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if hints[f.name] is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif hints[f.name] is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        chosen[f.name] = value
    return cls(**(chosen | overrides))
