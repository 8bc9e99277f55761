"""The settings as every surface shows them: the KFP signatures (:mod:`kftune.settings.signatures`), the CLI
flags, the README tables and the search space's keys all read :func:`settings_of`.

A description is the field's attribute docstring, followed by what the task registry says of it: each task's
value of a setting whose ``auto`` value comes from the task (``learning_rate``: "(classification: 0.0001,
causal-lm: 0.001, ...)"), each task's value of a ``per_task`` attribute (:func:`~kftune.settings.fields.setting`),
the choices of a ``Literal`` and the field's range ("Range: (0, 1)."). So a task's default is written once, in its
package, a rule once, on its field, and every surface follows them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from kftune.settings.fields import TYPES, attribute_docs, choices_of, rule_of
from kftune.tasks import TASKS


@dataclass(frozen=True)
class Setting:
    """One setting as the surfaces show it."""

    name: str
    type: type
    """``str``, ``int``, ``float``, ``bool``, ``dict`` or ``list`` (a choice is a ``str``)."""
    default: Any
    help: str
    """The attribute docstring on one line, with what each task makes of it, the allowed values of a choice and the
    range of a number."""
    choices: tuple[str, ...] | None
    owner: type
    """The dataclass that declares it."""
    searchable: bool = False


def _declaring_class(cls: type, name: str) -> type:
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            return klass
    return cls


def _shown(value) -> str:
    if isinstance(value, dict | list):
        import json

        return json.dumps(value)
    return repr(value) if isinstance(value, str) and not value else str(value)


def per_task_text(name: str, attribute: str | None = None) -> str:
    """What each registered task makes of setting ``name``: its ``auto`` default, or its ``attribute``;
    "" where no task says anything."""
    if attribute:
        values = [(task.name, getattr(task, attribute)) for task in TASKS.values()]
    else:
        values = [(task.name, task.defaults[name]) for task in TASKS.values() if name in task.defaults]
    return f" ({', '.join(f'{task}: {_shown(value)}' for task, value in values)})" if values else ""


def describe(cls: type, f: dataclasses.Field) -> str:
    """The description of field ``f`` of ``cls`` on every surface (see the module docstring)."""
    doc = attribute_docs(cls).get(f.name)
    if not doc:
        raise TypeError(f"{cls.__name__}.{f.name} has no attribute docstring: it is the setting's description")
    text, end = (doc[:-1], ".") if doc.endswith(".") else (doc, "")
    text += per_task_text(f.name, f.metadata.get("per_task")) + end
    choices = choices_of(typing.get_type_hints(cls)[f.name])
    rule = rule_of(f)
    return text + (f" One of: {', '.join(choices)}." if choices else "") + (f" Range: {rule}." if rule else "")


def settings_of(*groups) -> list[Setting]:
    """The settings of dataclasses (or instances: their values become the defaults), in order.

    A field inherited by several of the groups counts once; two different classes that declare
    the same name are an error, since one flat name cannot mean two things.
    """
    settings: dict[str, Setting] = {}
    for group in groups:
        cls = group if isinstance(group, type) else type(group)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            choices = choices_of(hints[f.name])
            kind = str if choices else hints[f.name]
            if kind not in TYPES:
                raise TypeError(f"{cls.__name__}.{f.name}: a setting is str, int, float, bool, dict, list or a "
                                f"Literal, not {kind}")
            if group is not cls:
                default = getattr(group, f.name)
            else:
                default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            setting = Setting(f.name, kind, default, describe(cls, f), choices, _declaring_class(cls, f.name),
                              f.metadata.get("searchable", False))
            known = settings.get(f.name)
            if known and known.owner is not setting.owner:
                raise TypeError(f"setting {f.name!r} is declared by both {known.owner.__name__} and "
                                f"{setting.owner.__name__}")
            settings[f.name] = setting
    return list(settings.values())
