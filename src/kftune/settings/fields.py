"""Settings, declared once: a typed dataclass field with an attribute docstring.

A setting is a field of a settings dataclass. Its type is ``str``, ``int``, ``float``, ``bool``,
``dict`` or ``list`` (what KFP takes), or a ``Literal[...]`` of strings for a choice (a ``str`` on
every surface, its values listed in the description); its attribute docstring is its description.
What else a field says of itself it says through :func:`setting`:

- its range (``ge``, ``gt``, ``le``, ``lt``), checked by :func:`check_settings` and shown after its
  description on every surface ("Range: (0, 1)."); ``auto=True`` where the default stands for a value
  decided later (the task's learning rate, the export's sequence length) or for none (no canary), and
  is allowed besides the range;
- ``searchable=True``: a hyperparameter search may vary it;
- ``per_task=attribute``: the description ends with each task's value of that attribute of the task
  (its primary metric, its summary); settings whose ``auto`` value comes from the task
  (:attr:`kftune.tasks.base.Task.defaults`) get each task's value without a marker.

:func:`internal` declares a field that code sets (a checkpoint path, a pruning target) and no surface
shows. :func:`same_as` gives a launcher's request a setting's default and range under the request's own
name, so neither is written twice.

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
from dataclasses import dataclass
from typing import Any, Literal

from docstring_parser import parse_from_object

from kftune.errors import ConfigError

TYPES = (str, int, float, bool, dict, list)  # what KFP parameters take
RENAMED = {"min_accuracy": "min_primary_score"}
"""Settings that were renamed, and their names now: a flag or run parameter of the old name is a one-line error
naming the new one."""


@dataclass(frozen=True)
class Rule:
    """The range a number setting takes: at least ``ge`` or above ``gt``, at most ``le`` or below ``lt`` (None:
    unbounded there); with ``auto``, that value too, which stands for something decided elsewhere."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    auto: float | None = None

    def allows(self, value) -> bool:
        if self.auto is not None and value == self.auto:
            return True  # decided elsewhere (the task's, the export's) or none; a task's value is checked once it is in
        # written so that NaN fails every bound
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        """``(0, 1)``, ``[13, 21]``, ``>= 1``, ``[0, 100] or -1``: as the descriptions show it."""
        lower = (self.ge, "[", ">=") if self.ge is not None else (self.gt, "(", ">") if self.gt is not None else None
        upper = (self.le, "]", "<=") if self.le is not None else (self.lt, ")", "<") if self.lt is not None else None
        if lower and upper:
            text = f"{lower[1]}{_number(lower[0])}, {_number(upper[0])}{upper[1]}"
        else:
            bound, _, operator = lower or upper
            text = f"{operator} {_number(bound)}"
        return text + (f" or {_number(self.auto)}" if self.auto is not None else "")

    def requirement(self) -> str:
        """What an error says a value must be: ``in (0, 1)``, ``>= 1``."""
        interval = (self.ge is not None or self.gt is not None) and (self.le is not None or self.lt is not None)
        return f"in {self}" if interval else str(self)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def setting(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, auto: bool | float = False, searchable: bool = False,
            per_task: str | None = None) -> Any:
    """A setting's dataclass field: its default, its range (``ge``/``gt``/``le``/``lt``; ``auto``: a value allowed
    besides, standing for a value decided later or for none: the default where True, else the number given),
    whether a search may vary it (``searchable``), and the task attribute its description ends with
    (``per_task``)."""
    metadata: dict[str, Any] = {}
    if (ge, gt, le, lt) != (None,) * 4:
        rule = Rule(ge, gt, le, lt, None if auto is False else default if auto is True else auto)
        if not rule.allows(default):
            raise TypeError(f"default {default!r} is outside its own range {rule}")
        metadata["rule"] = rule
    elif auto:
        raise TypeError("auto marks a default allowed besides a range; this setting has no range")
    if searchable:
        metadata["searchable"] = True
    if per_task:
        metadata["per_task"] = per_task
    return dataclasses.field(default=default, metadata=metadata)


def internal(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
             lt: float | None = None) -> Any:
    """A dataclass field that code sets and no surface (signature, flag, form, table) shows; checked against its
    range like a setting."""
    field = setting(default, ge=ge, gt=gt, le=le, lt=lt)
    return dataclasses.field(default=default, metadata={**field.metadata, "internal": True})


def same_as(cls: type, name: str) -> Any:
    """A field with the default and range of setting ``name`` of ``cls``: a launcher's request takes a setting
    under its own name (``min_replicas`` for ``serving_min_replicas``) without writing either twice."""
    f = cls.__dataclass_fields__[name]
    metadata = {"rule": f.metadata["rule"]} if "rule" in f.metadata else {}
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory, metadata=metadata)
    return dataclasses.field(default=f.default, metadata=metadata)


def rule_of(f: dataclasses.Field) -> Rule | None:
    """The range of field ``f``, if it has one."""
    return f.metadata.get("rule")


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


def check_settings(config) -> None:
    """Refuse a field of the dataclass ``config`` whose value its declaration does not allow: a choice that is not
    one of its ``Literal`` values, an ``int`` that is not a whole number, a ``float`` that is not a number, a
    number outside its range. One line naming the setting, what it takes and the value."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        choices = choices_of(hint)
        if choices and value not in choices:
            raise ConfigError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")
        if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{f.name} must be an integer, got {value!r}")
        if hint is float and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"{f.name} must be a number, got {value!r}")
        rule = rule_of(f)
        if rule and not (isinstance(value, int | float) and rule.allows(value)):
            raise ConfigError(f"{f.name} must be {rule.requirement()}, got {value!r}")


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
