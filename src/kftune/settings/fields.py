"""Settings, declared once: a typed dataclass field with an attribute docstring.

Every surface that shows a setting is derived from its dataclass: the KFP component and
pipeline signatures (:mod:`kftune.settings.signatures`), the CLI flags, the search
space's keys and types, and the parameter tables in the READMEs. This module reads the
dataclasses for them:

- a field's type is ``str``, ``int``, ``float``, ``bool``, ``dict`` or ``list`` (what KFP takes), or a
  ``Literal[...]`` of strings for a choice (a ``str`` on every surface, its values listed in the
  description and checked by :func:`check_choices`);
- its attribute docstring is its description;
- ``searchable()`` marks a setting a hyperparameter search may vary;
- ``internal()`` marks a field that code sets (a checkpoint path, a pruning target) and no
  surface shows.

Dataclasses group settings (torchtitan's ``Optimizer``, ``Checkpoint``, ...) and combine by
inheritance, so a stage's config keeps flat attribute access (``config.learning_rate``) and a
task can subclass a group to change its defaults. Flat names must be unique across the groups
a surface shows: :func:`settings_of` refuses two groups that declare the same name.

Shared here because more than one stage reads them: :class:`PretrainedModel` (the tokenizer in
preprocess, the weights in train), :class:`Seeding`, :class:`TextColumn` (the data's texts in
preprocess, the texts predict reads) and :class:`GenerationBudget` (evaluate's and predict's
greedy generations). A pipeline whose stages share a group shows it once and hands the one value
to each of them.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from docstring_parser import parse_from_object

from kftune.data.schema import TEXT
from kftune.errors import ConfigError
from kftune.tasks import TASKS

TYPES = (str, int, float, bool, dict, list)  # what KFP parameters take


def internal(default: Any) -> Any:
    """A dataclass field that code sets and no surface (signature, flag, form, table) shows."""
    return field(default=default, metadata={"internal": True})


def searchable(default: Any) -> Any:
    """A setting that a hyperparameter search may vary (the search space takes its type)."""
    return field(default=default, metadata={"searchable": True})


@dataclass(frozen=True)
class Setting:
    """One setting as the surfaces show it."""

    name: str
    type: type
    """``str``, ``int``, ``float``, ``bool``, ``dict`` or ``list`` (a choice is a ``str``)."""
    default: Any
    help: str
    """The attribute docstring on one line, with the allowed values of a choice."""
    choices: tuple[str, ...] | None
    owner: type
    """The dataclass that declares it."""
    searchable: bool = False


def _fold(text: str | None) -> str:
    return " ".join((text or "").split())


@functools.cache
def _attribute_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of ``cls`` and its bases (the nearest declaration wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update({p.arg_name: _fold(p.description) for p in parse_from_object(klass).params})
    return docs


def _declaring_class(cls: type, name: str) -> type:
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            return klass
    return cls


def settings_of(*groups) -> list[Setting]:
    """The settings of dataclasses (or instances: their values become the defaults), in order.

    A field inherited by several of the groups counts once; two different classes that declare
    the same name are an error, since one flat name cannot mean two things.
    """
    settings: dict[str, Setting] = {}
    for group in groups:
        cls = group if isinstance(group, type) else type(group)
        hints = typing.get_type_hints(cls)
        docs = _attribute_docs(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            kind, choices = hints[f.name], None
            if typing.get_origin(kind) is Literal:
                choices = typing.get_args(kind)
                kind = str
            if kind not in TYPES:
                raise TypeError(f"{cls.__name__}.{f.name}: a setting is str, int, float, bool, dict, list or a "
                                f"Literal, not {kind}")
            if not docs.get(f.name):
                raise TypeError(f"{cls.__name__}.{f.name} has no attribute docstring: it is the setting's description")
            help_text = docs[f.name] + (f" One of: {', '.join(choices)}." if choices else "")
            if group is not cls:
                default = getattr(group, f.name)
            else:
                default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            setting = Setting(f.name, kind, default, help_text, choices, _declaring_class(cls, f.name),
                              f.metadata.get("searchable", False))
            known = settings.get(f.name)
            if known and known.owner is not setting.owner:
                raise TypeError(f"setting {f.name!r} is declared by both {known.owner.__name__} and "
                                f"{setting.owner.__name__}")
            settings[f.name] = setting
    return list(settings.values())


def check_choices(config) -> None:
    """Refuse a choice setting whose value is not one of its ``Literal`` values."""
    for setting in settings_of(config):
        value = getattr(config, setting.name)
        if setting.choices and value not in setting.choices:
            raise ConfigError(f"{setting.name} must be one of {', '.join(setting.choices)}, got {value!r}")


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


@dataclass
class PretrainedModel:
    """The model fine-tuning starts from."""

    model: str = "auto"
    """Pretrained model: a Hugging Face model directory, local or at s3://bucket/prefix or gs://bucket/prefix, bundled:all-MiniLM-L6-v2, bundled:SmolLM2-135M-Instruct, or a hub id where the hub is reachable; auto: the task's bundled model (classification: bundled:all-MiniLM-L6-v2, causal-lm: bundled:SmolLM2-135M-Instruct, regression: bundled:all-MiniLM-L6-v2, multilabel: bundled:all-MiniLM-L6-v2, token-classification: bundled:all-MiniLM-L6-v2)."""  # noqa: E501


@dataclass
class Seeding:
    """One seed for the whole run."""

    seed: int = 42
    """Seed of the split, the augmentation, the initialisation and the batch order: the same seed gives the same model."""  # noqa: E501


@dataclass
class TextColumn:
    """Where tabular data keeps its texts."""

    text_column: str = TEXT
    """Column holding the text: of the labelled data, and of the files predict reads (causal-lm predictions: the prompts, each asked as one user turn)."""  # noqa: E501


@dataclass
class GenerationBudget:
    """How long a causal LM's greedy answers may grow."""

    max_new_tokens: int = 0
    """causal-lm: greedy generations (evaluate's answers to the test prompts, predict's) stop after this many tokens; 0: the longest training completion plus 4 (at most 256), which the export records for predict."""  # noqa: E501


TASK_CHOICES = ("auto", *TASKS)  # the registered tasks (kftune.tasks.TASKS)


@dataclass
class TaskChoice:
    """What the run learns. Settings left at ``auto`` take the task's defaults
    (:mod:`kftune.tasks`) when a config with this group is built."""

    task: Literal[TASK_CHOICES] = "auto"
    """auto (decided from the data: the bundled default is classification; lists of labels multilabel, non-integer numbers regression, instruction columns causal-lm), classification (one label per text), causal-lm (instruction tuning of a causal language model on prompt/completion or chat data), regression (one number per text) or multilabel (a set of labels per text)."""  # noqa: E501

    def __post_init__(self) -> None:
        from kftune.tasks import apply_task_defaults

        apply_task_defaults(self)
