"""Stage boundaries as code: no stage imports another; pipelines import component definitions and
shared definitions only (as kubeflow/pipelines-components checks its components' imports in CI).

Every import counts, also those inside functions (a component's body runs in its own image).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = REPO / "components"
STAGES = sorted(p.name for p in COMPONENTS.iterdir() if p.is_dir() and (p / "__init__.py").exists()
                and p.name != "common")
PREFIX = "kftune.components."


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            # `from kftune.components.train import component` imports a module too
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def stage_of(module: str) -> str | None:
    """The stage (or "common") a kftune.components module belongs to."""
    if not module.startswith(PREFIX):
        return None
    return module[len(PREFIX):].split(".")[0]


def violations(path: Path, allowed) -> list[str]:
    rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return [f"{rel}:{line} imports {module}" for line, module in imported_modules(path)
            if stage_of(module) and not allowed(module)]


def test_the_walk_sees_every_stage():
    assert {"preprocess", "train", "tune", "evaluate", "export", "predict", "publish", "serve", "deploy"} <= set(STAGES)


def within(stage: str):
    """Imports a module of ``stage`` may make: its own and common's."""
    return lambda module: stage_of(module) in (stage, "common")


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_only_itself_and_common(stage):
    found = [v for path in sorted((COMPONENTS / stage).rglob("*.py")) for v in violations(path, within(stage))]
    assert not found, "\n".join(found)


def test_common_imports_no_stage():
    found = [v for path in sorted((COMPONENTS / "common").rglob("*.py"))
             for v in violations(path, lambda module: stage_of(module) == "common")]
    assert not found, "\n".join(found)


def test_pipelines_import_component_definitions_and_shared_code_only():
    def allowed(module: str) -> bool:
        stage = stage_of(module)
        rest = module[len(PREFIX) + len(stage):].lstrip(".")
        return stage == "common" or rest in ("", "component")

    found = [v for path in sorted((REPO / "pipelines").glob("*.py")) for v in violations(path, allowed)]
    assert not found, "\n".join(found)


def test_the_check_catches_a_cross_stage_import(tmp_path):
    """The walk must see imports inside functions too, where component bodies keep theirs."""
    source = tmp_path / "component.py"
    source.write_text("import json\n\ndef f():\n    from kftune.components.tune.search import plan_search\n"
                      "    from kftune.components.common.settings import settings_from\n")
    (found,) = {v.split(" imports ")[0] for v in violations(source, within("train"))}
    assert found == f"{source}:4"
