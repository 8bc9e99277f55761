"""One source per setting: every surface that shows a setting (the compiled pipelines' run
parameters and component inputs, the CLI flags, the search space, the README tables) has the
name, type, default and description of its dataclass field."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path
from typing import Literal

import pytest
import yaml

from kftune.cli.main import build_parser
from kftune.cli.settings_docs import main as settings_docs
from kftune.cluster.resources import TrainResources
from kftune.components.evaluate.config import EvaluateConfig
from kftune.components.preprocess.config import PreprocessConfig
from kftune.errors import ConfigError
from kftune.pipelines import finetune, tune
from kftune.pipelines.cluster import Cluster, ClusterOptions, StorageSecrets
from kftune.settings.catalog import settings_of
from kftune.settings.fields import check_settings, internal, same_as, setting, settings_from
from kftune.settings.groups import PretrainedModel
from kftune.settings.signatures import with_settings
from kftune.tasks import TASKS
from kftune.training.config import TrainConfig
from kftune.training.search_space import SEARCHABLE, apply_hyperparameters, parse_space

REPO = Path(__file__).resolve().parents[1]
KFP_TYPES = {str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", bool: "BOOLEAN", dict: "STRUCT",
             list: "LIST"}
PIPELINES = {"finetune": finetune, "tune": tune}


def compiled(name: str) -> dict:
    pipeline, _platform = yaml.safe_load_all((REPO / "pipelines" / "compiled" / f"{name}.yaml").read_text())
    return pipeline


def pipeline_settings(name: str):
    """The settings of the committed YAML, compiled with the default resources and Secrets (no GCS one)."""
    module = PIPELINES[name]
    cluster = Cluster()
    omitted = cluster.omitted_settings()
    return {s.name: s for s in settings_of(*module.SETTINGS, cluster.resources, cluster.secrets)
            if s.name not in omitted}


def assert_matches(spec: dict, setting, where: str) -> None:
    assert spec["parameterType"] == KFP_TYPES[setting.type], where
    assert spec["defaultValue"] == setting.default, where
    assert spec["description"] == setting.help, where


@pytest.mark.parametrize("name", PIPELINES)
def test_run_parameters_are_the_settings(name):
    """The compiled YAML's run form: one parameter per setting, and nothing else."""
    params = compiled(name)["root"]["inputDefinitions"]["parameters"]
    settings = pipeline_settings(name)
    assert set(params) == set(settings)
    for param, spec in params.items():
        assert_matches(spec, settings[param], f"{name}: {param}")


@pytest.mark.parametrize("name", PIPELINES)
def test_component_inputs_are_their_settings(name):
    settings = pipeline_settings(name)
    checked = 0
    for component, spec in compiled(name)["components"].items():
        for param, param_spec in spec.get("inputDefinitions", {}).get("parameters", {}).items():
            if param in settings and "defaultValue" in param_spec:
                assert_matches(param_spec, settings[param], f"{name}: {component}.{param}")
                checked += 1
    assert checked > 60


def _flags(command: str) -> dict[str, argparse.Action]:
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    return {a.dest: a for a in parser._actions}


@pytest.mark.parametrize(("command", "groups"), [
    ("run", finetune.LOCAL_SETTINGS), ("tune", tune.LOCAL_SETTINGS),
    ("compile", (TrainResources, StorageSecrets, ClusterOptions)),
])
def test_cli_flags_are_the_settings(command, groups):
    flags = _flags(command)
    for s in settings_of(*groups):
        action = flags[s.name]
        assert action.option_strings[0] == "--" + s.name.replace("_", "-")
        assert action.default == s.default, s.name
        assert action.help.startswith(s.help.replace("%", "%%")), s.name
        assert (tuple(action.choices) if action.choices else None) == s.choices, s.name


def test_search_space_takes_every_searchable_setting_with_its_type():
    trainable = {s.name: s for s in settings_of(TrainConfig)}
    assert set(SEARCHABLE) <= set(trainable)
    for name, kind in SEARCHABLE.items():
        mode = "lora" if name.startswith("lora_") else "full"
        value = trainable[name].default or (0.01 if kind is float else 2)
        space = parse_space(f'{{"{name}": [{value}]}}', mode)
        assert space.names == [name]
        config = apply_hyperparameters(TrainConfig(training_mode=mode), {name: value})
        assert isinstance(getattr(config, name), kind)
    for name in set(trainable) - set(SEARCHABLE):
        with pytest.raises(ConfigError, match="cannot be searched"):
            parse_space(f'{{"{name}": [1]}}')


def test_readme_tables_are_generated_from_the_settings():
    assert settings_docs(["--root", str(REPO), "--check"]) == 0, "run: python -m kftune.cli.settings_docs"


# --- the mechanism --------------------------------------------------------------------------------


@dataclasses.dataclass
class Example(PretrainedModel):
    """A settings group for these tests."""

    speed: float = 1.5
    """How fast."""
    mode: Literal["a", "b"] = "a"
    """Which mode."""
    secret: str = internal("")


def test_settings_carry_type_default_choices_and_docstring():
    model, speed, mode = settings_of(Example)
    assert (model.name, model.owner) == ("model", PretrainedModel)
    assert (speed.type, speed.default, speed.help) == (float, 1.5, "How fast.")
    assert (mode.type, mode.choices, mode.help) == (str, ("a", "b"), "Which mode. One of: a, b.")
    assert [s.default for s in settings_of(Example(speed=3.0))][1] == 3.0  # an instance gives the defaults
    with pytest.raises(ConfigError, match="mode must be one of a, b, got 'c'"):
        check_settings(Example(mode="c"))


def test_a_name_declared_twice_is_refused():
    @dataclasses.dataclass
    class Other:
        speed: int = 1
        """Another speed."""

    with pytest.raises(TypeError, match="'speed' is declared by both"):
        settings_of(Example, Other)


def test_a_setting_without_docstring_is_refused():
    @dataclasses.dataclass
    class Undocumented:
        knob: int = 1

    with pytest.raises(TypeError, match="no attribute docstring"):
        settings_of(Undocumented)


def test_settings_from_takes_its_own_and_mends_kfp_numbers():
    example = settings_from(Example, {"speed": 2, "mode": "b", "unrelated": 1})
    assert example == Example(speed=2.0, mode="b") and isinstance(example.speed, float)
    assert settings_from(TrainConfig, {"num_train_epochs": 4.0}).num_train_epochs == 4  # kfp.local hands 4.0


def test_with_settings_writes_source_that_kfp_embeds():
    from kfp import dsl

    @with_settings(Example)
    def door(count: int) -> str:
        """Do it.

        Args:
            count: How many.
        """
        values = dict(locals())
        return str(sorted(values))

    assert door(1) == str(sorted(["count", "model", "speed", "mode"]))
    component = dsl.component(door, base_image="python:3.11")
    inputs = component.component_spec.inputs
    assert list(inputs) == ["count", "model", "speed", "mode"]
    assert inputs["speed"].default == 1.5 and inputs["speed"].description == "How fast."
    source = component.component_spec.implementation.container.command[-1]
    assert "speed: float = 1.5," in source and "secret" not in source


# --- a setting's rules live with it ---------------------------------------------------------------


@dataclasses.dataclass
class Ranged:
    """Settings with ranges, for these tests."""

    rate: float = setting(0.0, gt=0, lt=1, auto=True)
    """Learning speed; 0: the task's."""
    steps: int = setting(10, ge=1)
    """How many steps."""
    port: int = setting(8080, ge=1, le=65535)
    """Where to listen."""


@pytest.mark.parametrize(("values", "message"), [
    ({"rate": 1.0}, "rate must be in (0, 1) or 0, got 1.0"),
    ({"rate": float("nan")}, "rate must be in (0, 1) or 0, got nan"),
    ({"rate": "fast"}, "rate must be a number, got 'fast'"),
    ({"steps": 0}, "steps must be >= 1, got 0"),
    ({"steps": 2.0}, "steps must be an integer, got 2.0"),  # settings_from mends KFP's 2.0; a config keeps it
    ({"steps": True}, "steps must be an integer, got True"),
    ({"port": 65536}, "port must be in [1, 65535], got 65536"),
])
def test_a_value_outside_its_range_is_a_one_line_error_naming_the_setting(values, message):
    check_settings(Ranged())
    with pytest.raises(ConfigError) as error:
        check_settings(Ranged(**values))
    assert str(error.value) == message


def test_the_range_is_shown_on_every_surface():
    rate, steps, port = settings_of(Ranged)
    assert rate.help == "Learning speed; 0: the task's. Range: (0, 1) or 0."
    assert (steps.help, port.help) == ("How many steps. Range: >= 1.", "Where to listen. Range: [1, 65535].")
    learning_rate = next(s for s in settings_of(TrainConfig) if s.name == "learning_rate")
    assert learning_rate.help.endswith(". Range: (0, 1) or 0.")
    # what --help, the KFP form and the README tables show is the help (the tests above compare them all with it)
    assert _flags("run")["learning_rate"].help.startswith(learning_rate.help)
    form = compiled("finetune")["root"]["inputDefinitions"]["parameters"]["learning_rate"]["description"]
    assert form == learning_rate.help
    assert learning_rate.help in (REPO / "components" / "train" / "README.md").read_text()


def test_the_auto_sentinel_is_allowed_and_the_rule_applies_to_the_resolved_value():
    check_settings(Ranged(rate=0.0))
    assert TrainConfig(task="classification").learning_rate == TASKS["classification"].defaults["learning_rate"]
    TrainConfig(learning_rate=0.0).validate()  # task auto: checked on the default task's value
    with pytest.raises(ConfigError, match=r"^learning_rate must be in \(0, 1\) or 0, got -0.0001$"):
        TrainConfig(learning_rate=-1e-4).validate()
    PreprocessConfig(task="auto", data="reviews.csv", max_seq_length=0).validate()  # the task's, once known
    with pytest.raises(ConfigError, match="max_seq_length must be >= 8 or 0, got 4"):
        PreprocessConfig(max_seq_length=4).validate()
    EvaluateConfig(min_primary_score=-1).validate()
    with pytest.raises(ConfigError, match=r"min_primary_score must be in \[0, 1\] or -1, got 1.5"):
        EvaluateConfig(min_primary_score=1.5).validate()


def test_a_range_is_declared_once():
    with pytest.raises(TypeError, match="default 0 is outside its own range >= 1"):
        setting(0, ge=1)
    with pytest.raises(TypeError, match="this setting has no range"):
        setting(0, auto=True)

    @dataclasses.dataclass
    class Request:  # a launcher's request takes a setting's default and range under its own name
        count: int = same_as(Ranged, "steps")

    assert Request().count == 10
    with pytest.raises(ConfigError, match="^count must be >= 1, got 0$"):
        check_settings(Request(count=0))


SETTINGS_SOURCES = [path for root in ("src/kftune", "components", "pipelines") for path in (REPO / root).rglob("*.py")]
RANGES_ELSEWHERE = {("EvaluateConfig", "min_gain_over_baseline")}
"""Single-field comparisons that are not a field's range: min_gain_over_baseline's bounds depend on the task's
primary metric (a score gains at most 1, an error gains in the target's units)."""


def _field_compared(node, loops: dict) -> list[str]:
    """The fields ``node`` reads (``self.x``, ``config.x``, ``getattr(self, name)`` in a loop over names)."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("self", "config"):
        return [node.attr]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
            and isinstance(node.args[1], ast.Name)):
        return loops.get(node.args[1].id, ["?"])
    return []


def _is_number(node) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool)


def single_field_range_checks(tree: ast.Module) -> list[tuple[str, str, str]]:
    """(class, field, comparison) of every comparison of one field with numbers in a ``validate`` or
    ``check_settings`` method."""
    found = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for method in cls.body:
            if not (isinstance(method, ast.FunctionDef) and method.name in ("validate", "check_settings")):
                continue
            loops: dict[str, list[str]] = {}
            for node in ast.walk(method):
                if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and isinstance(node.iter, ast.Tuple):
                    loops[node.target.id] = [e.value for e in node.iter.elts if isinstance(e, ast.Constant)]
                if isinstance(node, ast.Compare):
                    operands = [node.left, *node.comparators]
                    fields = [_field_compared(o, loops) for o in operands]
                    numbers = all(f or _is_number(o) for f, o in zip(fields, operands, strict=True))
                    if sum(map(bool, fields)) == 1 and numbers:
                        found += [(cls.name, name, ast.unparse(node)) for name in next(f for f in fields if f)]
    return found


def test_no_validate_holds_a_single_field_range_check():
    """A setting's range is declared on its field; validate() keeps what relates fields and what is no range."""
    found = [check for path in SETTINGS_SOURCES for check in single_field_range_checks(ast.parse(path.read_text()))
             if check[:2] not in RANGES_ELSEWHERE]
    assert found == [], "declare these ranges on the fields: setting(default, ge=..., le=...)"
    # the scan sees what it looks for
    sample = ast.parse("class C:\n def validate(self):\n  for n in ('a', 'b'):\n   if getattr(self, n) < 1: pass\n"
                       "  if not 0 < self.c <= 1 or self.d > self.e: pass")
    assert [check[1] for check in single_field_range_checks(sample)] == ["a", "b", "c"]
