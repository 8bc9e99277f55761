"""Command-line flags derived from settings dataclasses: ``--learning-rate`` for
``TrainConfig.learning_rate``, with its type, choices, default and attribute docstring.

As ``HfArgumentParser`` does for transformers' argument dataclasses: the dataclass is the one
declaration; this only shows it. Dicts and lists are given as JSON.
"""

from __future__ import annotations

import argparse
import json

from kftune.settings.catalog import Setting, settings_of
from kftune.settings.fields import RENAMED

METAVARS = {"data": "PATH", "model": "DIR_OR_ID", "predict_input": "PATH_OR_URI", "predict_output": "PATH_OR_URI"}


def _json(kind: type):
    def parse(text: str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"expected JSON ({e.msg}), got {text!r}") from e
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"expected a JSON {'object' if kind is dict else 'array'}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def add_setting_flags(parser: argparse.ArgumentParser, settings: list[Setting]) -> None:
    """One flag per setting, dest = the setting's name."""
    for s in settings:
        flag = "--" + s.name.replace("_", "-")
        default = json.dumps(s.default) if s.type in (dict, list) else s.default
        help_text = f"{s.help} (default: {default})".replace("%", "%%")
        if s.type is bool:
            parser.add_argument(flag, dest=s.name, action=argparse.BooleanOptionalAction, default=s.default,
                                help=help_text)
            continue
        kind = _json(s.type) if s.type in (dict, list) else s.type
        metavar = METAVARS.get(s.name, "JSON" if s.type in (dict, list) else
                               {str: "TEXT"}.get(s.type, s.type.__name__.upper()))
        parser.add_argument(flag, dest=s.name, type=kind, default=s.default, choices=s.choices,
                            metavar=None if s.choices else metavar, help=help_text)


class _Renamed(argparse.Action):
    """A flag of a renamed setting: one line naming the flag it is now."""

    def __init__(self, option_strings, dest, now: str, **kwargs):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.now = now

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is now {self.now}")


def add_group_flags(parser: argparse.ArgumentParser, *groups) -> None:
    """Flags for the settings of dataclasses (or instances, whose values become the defaults), and a one-line error
    for the old flag of a renamed one."""
    settings = settings_of(*groups)
    add_setting_flags(parser, settings)
    names = {s.name for s in settings}
    for old, new in RENAMED.items():
        if new in names:
            parser.add_argument("--" + old.replace("_", "-"), dest=f"renamed_{old}", action=_Renamed,
                                now="--" + new.replace("_", "-"))


def setting_values(args: argparse.Namespace, *groups) -> dict:
    """{name: value} of the parsed flags of ``groups``' settings."""
    return {s.name: getattr(args, s.name) for s in settings_of(*groups)}
