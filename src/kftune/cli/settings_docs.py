"""The settings tables of the component READMEs, generated from the settings dataclasses.

Each README holds its stage's table between two marker lines; ``python -m kftune.cli.settings_docs``
rewrites them (``--check`` only compares, as the test suite does), so a table cannot drift from
the dataclass it shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kftune.cluster.resources import TrainResources
from kftune.components.deploy.config import DeployConfig
from kftune.components.evaluate.config import GATE_SETTINGS, EvaluateConfig
from kftune.components.export.config import ExportConfig
from kftune.components.predict.config import PredictConfig
from kftune.components.preprocess.config import PreprocessConfig
from kftune.components.pretrain.config import PretrainConfig
from kftune.components.publish.config import PublishConfig
from kftune.components.serve.config import ServeConfig
from kftune.components.tune.config import SearchConfig
from kftune.settings.catalog import Setting, settings_of
from kftune.tracking.config import TrackingConfig
from kftune.tracking.registry import RegistryConfig
from kftune.training.config import Launch, TrainConfig
from kftune.training.search_space import SEARCHABLE

BEGIN = ("<!-- settings: generated from the settings dataclasses by `python -m kftune.cli.settings_docs`; "
         "do not edit -->")
END = "<!-- end of settings -->"

TABLES: dict[str, tuple] = {
    "components/preprocess/README.md": (PreprocessConfig,),
    "components/pretrain/README.md": (PretrainConfig,),
    "components/train/README.md": (TrainConfig, Launch, TrainResources, TrackingConfig),
    "components/tune/README.md": (SearchConfig,),
    "components/evaluate/README.md": (EvaluateConfig,),
    "components/export/README.md": (ExportConfig, RegistryConfig),
    "components/predict/README.md": (PredictConfig,),
    "components/publish/README.md": (PublishConfig,),
    "components/deploy/README.md": (DeployConfig,),
    "components/serve/README.md": (ServeConfig,),
}
"""Which settings each README shows (a stage's run parameters, or kftune serve's and kftune predict's flags)."""


def _default(setting: Setting) -> str:
    value = json.dumps(setting.default) if setting.type in (dict, list, bool) else repr(setting.default)
    return f"`{value}`"


def settings_table(*groups) -> str:
    """A Markdown table of the settings of ``groups``: name (CLI flag), group, type, default, description."""
    rows = ["| setting (flag) | group | type | default | description |", "|---|---|---|---|---|"]
    for s in settings_of(*groups):
        kind = "choice" if s.choices else s.type.__name__
        flag = "--" + s.name.replace("_", "-")
        rows.append(f"| `{s.name}` (`{flag}`) | {s.owner.__name__} | {kind} | {_default(s)} | "
                    f"{s.help.replace('|', '&#124;')} |")
    return "\n".join(rows)


TASKS_README = "README.md"
"""The README whose generated section is the table of the registered tasks (:func:`tasks_table`)."""


def tasks_table() -> str:
    """A Markdown table of the registered tasks: what each learns, the values its ``auto`` settings take, the
    score the gate goes by, the baseline, what export writes and how it is served."""
    from kftune.tasks import TASKS

    keys = list(dict.fromkeys(key for task in TASKS.values() for key in task.defaults))
    rows = [f"| task | what it learns | {' | '.join(f'`{k}`' for k in keys)} | primary score | baseline | export "
            "| served over |", "|---|---|" + "---|" * (len(keys) + 4)]
    for task in TASKS.values():
        direction = "lower is better" if not task.higher_is_better(task.primary) else "higher is better"
        values = " | ".join(_task_default(task, k) for k in keys)
        rows.append(f"| `{task.name}` | {task.summary} | {values} | `{task.primary}` ({direction}) | "
                    f"`{task.baseline}` | {task.export_format} | {task.serving} |")
    return "\n".join(rows)


def _task_default(task, key: str) -> str:
    if key in task.defaults:
        return f"`{task.defaults[key]}`"
    return "(none: no such gate)" if key in GATE_SETTINGS else "(set it)"


def gates_table() -> str:
    """A Markdown table of the gate's settings that apply to each registered task, with the score each bounds
    (:meth:`~kftune.tasks.base.Task.gates`); the others are refused for the task."""
    from kftune.tasks import TASKS

    rows = ["| task | " + " | ".join(f"`{name}`" for name in GATE_SETTINGS) + " |",
            "|---|" + "---|" * len(GATE_SETTINGS)]
    for task in TASKS.values():
        gates = task.gates()
        rows.append(f"| `{task.name}` | " + " | ".join(f"`{gates[name]}`" if name in gates else "refused"
                                                       for name in GATE_SETTINGS) + " |")
    return "\n".join(rows)


def section(path: str) -> str:
    """What goes between the markers of README ``path``."""
    if path == TASKS_README:
        return tasks_table()
    text = settings_table(*TABLES[path])
    if path == "components/tune/README.md":
        searchable = ", ".join(f"`{name}` ({kind.__name__})" for name, kind in SEARCHABLE.items())
        text += f"\n\nSearchable training options (keys of `search_space`): {searchable}."
    if path == "components/evaluate/README.md":
        text += ("\n\nWhich gate settings apply to which task, and the test score each bounds (for "
                 "`max_loss_to_trivial`, the trivial baseline every score is held against; a setting marked "
                 "refused, set away from its default, is a one-line error before the run starts):\n\n" + gates_table())
    return text


def rendered(readme: str, path: str) -> str:
    """``readme`` with its settings section regenerated (added at the end where it has none)."""
    block = f"{BEGIN}\n{section(path)}\n{END}"
    if BEGIN in readme and END in readme:
        before, rest = readme.split(BEGIN, 1)
        return before + block + rest.split(END, 1)[1]
    heading = "Tasks" if path == TASKS_README else "Settings"
    return readme.rstrip("\n") + f"\n\n## {heading}\n\n{block}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository (default: .)")
    parser.add_argument("--check", action="store_true", help="only report READMEs whose table is stale")
    args = parser.parse_args(argv)
    stale = []
    for path in (*TABLES, TASKS_README):
        readme = args.root / path
        text = readme.read_text(encoding="utf-8")
        fresh = rendered(text, path)
        if fresh != text:
            stale.append(path)
            if not args.check:
                readme.write_text(fresh, encoding="utf-8")
    for path in stale:
        print(f"{'stale' if args.check else 'rewrote'}: {path}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
