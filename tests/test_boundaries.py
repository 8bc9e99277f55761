"""The house rules as code (as kubeflow/pipelines-components checks its components' imports in CI).

- A stage (``components/<stage>/``, one image each) imports its own modules and the layers, never another stage.
- A layer (every ``kftune`` module outside the stages, the pipelines and the CLI: ``kftune.settings``,
  ``kftune.data``, ``kftune.tasks``, ``kftune.training``, ...) imports other layers only: never a stage, a pipeline
  or the CLI.
- Pipelines import component definitions (``component.py``) and layers.
- No module imports, directly or through others, a module that imports it back.

Every import counts, also those inside functions (a component's body runs in its own image).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = REPO / "components"
SOURCES = {"kftune": REPO / "src" / "kftune", "kftune.components": COMPONENTS, "kftune.pipelines": REPO / "pipelines"}
STAGES = sorted(p.name for p in COMPONENTS.iterdir() if p.is_dir() and (p / "__init__.py").exists())
STAGE_PREFIX = "kftune.components."


def module_files() -> dict[str, Path]:
    """Every module of the kftune package, by dotted name."""
    found = {}
    for package, root in SOURCES.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if package == "kftune" and parts[:1] in (("components",), ("pipelines",)):
                continue
            found[name] = path
    return found


MODULES = module_files()


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, anywhere in the file: ``from kftune.components.train import
    component`` imports the module ``kftune.components.train.component``, ``from kftune.data.schema import LABEL``
    the module ``kftune.data.schema``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += sorted({(node.lineno, f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES
                              else node.module) for alias in node.names})
    return found


def resolved(module: str) -> str | None:
    """The kftune module an import names (``from kftune.data.schema import LABEL`` names kftune.data.schema), or
    None outside kftune."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


def kind(module: str) -> str:
    """``stage:<name>``, ``pipeline``, ``cli`` or ``layer``."""
    if module.startswith(STAGE_PREFIX):
        return "stage:" + module[len(STAGE_PREFIX):].split(".")[0]
    if module == "kftune.components":
        return "layer"
    if module.startswith("kftune.pipelines"):
        return "pipeline"
    if module.startswith("kftune.cli") or module == "kftune.__main__":
        return "cli"
    return "layer"


def edges(path: Path) -> list[tuple[int, str]]:
    """(line, kftune module) of each import in ``path``."""
    return [(line, target) for line, name in imported_modules(path) if (target := resolved(name))]


def violations(name: str, allowed) -> list[str]:
    path = MODULES[name]
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return [f"{shown}:{line} imports {target}" for line, target in edges(path)
            if not allowed(target)]


def test_the_walk_sees_every_stage_and_layer():
    assert {"preprocess", "pretrain", "train", "tune", "evaluate", "export", "predict", "publish", "serve",
            "deploy"} <= set(STAGES)
    layers = {name.split(".")[1] for name in MODULES if kind(name) == "layer" and name.count(".") >= 1}
    assert {"settings", "data", "tasks", "training", "inference", "cluster", "storage"} <= layers


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_only_itself_and_layers(stage):
    own = f"stage:{stage}"
    found = [v for name in MODULES if kind(name) == own
             for v in violations(name, lambda target: kind(target) in (own, "layer"))]
    assert not found, "\n".join(found)


def test_a_layer_imports_no_stage_pipeline_or_cli():
    found = [v for name in MODULES if kind(name) == "layer"
             for v in violations(name, lambda target: kind(target) == "layer")]
    assert not found, "\n".join(found)


def test_pipelines_import_component_definitions_and_layers_only():
    def allowed(target: str) -> bool:
        return kind(target) in ("layer", "pipeline") or (
            kind(target).startswith("stage:") and target.rsplit(".", 1)[-1] == "component")

    found = [v for name in MODULES if kind(name) == "pipeline" for v in violations(name, allowed)]
    assert not found, "\n".join(found)


def import_cycles() -> list[list[str]]:
    """The strongly connected components of more than one module in the graph of kftune's imports (Tarjan)."""
    graph = {name: sorted({t for _, t in edges(path) if t != name}) for name, path in MODULES.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    return cycles


def test_no_import_cycles_at_any_level():
    """Function-level imports count: a cycle hidden inside a function is still a cycle."""
    assert not import_cycles(), "\n".join(" <-> ".join(c) for c in import_cycles())


def test_the_checks_catch_a_cross_stage_import_and_a_cycle(tmp_path, monkeypatch):
    """The walk must see imports inside functions too, where component bodies keep theirs."""
    source = tmp_path / "component.py"
    source.write_text("import json\n\ndef f():\n    from kftune.components.tune.search import plan_search\n"
                      "    from kftune.settings.fields import settings_from\n")
    monkeypatch.setitem(MODULES, "kftune.components.train.probe", source)
    (found,) = violations("kftune.components.train.probe", lambda target: kind(target) in ("stage:train", "layer"))
    assert found.endswith(":4 imports kftune.components.tune.search")

    layer = tmp_path / "layer.py"
    layer.write_text("def f():\n    from kftune.components.train.probe import x\n")
    monkeypatch.setitem(MODULES, "kftune.data.probe", layer)
    source.write_text("from kftune.data.probe import f\n")
    assert ["kftune.components.train.probe", "kftune.data.probe"] in import_cycles()


TASKS_DIR = REPO / "src" / "kftune" / "tasks"
TASK_PACKAGES = sorted(p.name for p in TASKS_DIR.iterdir() if (p / "__init__.py").is_file())


def in_a_task_package(module: str) -> bool:
    return any(module == f"kftune.tasks.{name}" or module.startswith(f"kftune.tasks.{name}.")
               for name in TASK_PACKAGES)


def task_mentions(path: Path, task_names: set[str]) -> list[str]:
    """Where ``path`` names a task: a string literal equal to a task's name, a read of ``token_level``, an import of
    a task package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in task_names:
            found.append(f"{shown}:{node.lineno} names task {node.value!r}")
        elif (isinstance(node, ast.Attribute) and node.attr == "token_level") or (
                isinstance(node, ast.Name) and node.id == "token_level"):
            found.append(f"{shown}:{node.lineno} reads token_level")
    found += [f"{shown}:{line} imports {target}" for line, target in edges(path) if in_a_task_package(target)]
    return found


def test_no_module_outside_the_task_packages_names_a_task():
    """Stages, pipelines, the CLI and the layers ask the task (the registry hands it over); none names one."""
    from kftune.tasks import TASKS

    assert {"classification", "regression", "multilabel", "token-classification", "causal-lm"} <= set(TASKS)
    found = [v for name, path in MODULES.items() if not in_a_task_package(name)
             for v in task_mentions(path, set(TASKS))]
    assert not found, "\n".join(found)


def test_the_task_check_catches_a_name_a_flag_and_a_task_import(tmp_path):
    source = tmp_path / "stage.py"
    source.write_text('def f(config, task):\n    if config.task == "regression":\n        return task.token_level\n'
                      "    from kftune.tasks.multilabel import TASK\n")
    assert [v.split(" ", 1)[1] for v in task_mentions(source, {"regression"})] == [
        "names task 'regression'", "reads token_level", "imports kftune.tasks.multilabel"]


def test_every_package_is_in_the_distribution():
    """pyproject.toml lists the packages (the images install the distribution, not the tree): each must be there."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages <= listed, sorted(packages - listed)


MAX_FUNCTION_LINES = 120
"""A function of the training layer fits on a screen (kftune issue 26: the loop reads top to bottom)."""


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (n lines)`` of every function or method under ``root`` (path relative to it) longer than
    ``limit`` lines, counted from its ``def`` line to its last line."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_in_the_training_layer_is_longer_than_a_screen(tmp_path):
    too_long = long_functions(REPO / "src" / "kftune" / "training")
    assert not too_long, "\n".join(too_long)
    # the walk sees methods and nested functions too
    body = "\n".join(f"            x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "probe.py").write_text(f"class A:\n    def f(self):\n        def g():\n{body}\n", encoding="utf-8")
    assert long_functions(tmp_path) == [f"probe.py:2 f ({MAX_FUNCTION_LINES + 2} lines)",
                                        f"probe.py:3 g ({MAX_FUNCTION_LINES + 1} lines)"]
