"""The compiled pipeline: GPU request on the train task, UI-ready parameters, image scheme,
and the committed YAML kept fresh."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kftune.cli import main

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / "pipelines" / "compiled" / "finetune.yaml"


def _compile(tmp_path, *flags) -> dict:
    out = tmp_path / "finetune.yaml"
    assert main(["compile", "--output", str(out), *flags]) == 0
    return yaml.safe_load(out.read_text())


def _executor(doc, component):
    return doc["deploymentSpec"]["executors"][f"exec-{component}"]["container"]


def test_train_task_requests_gpu_cpu_and_memory(tmp_path):
    doc = _compile(tmp_path)
    resources = _executor(doc, "train")["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert int(resources["accelerator"]["resourceCount"]) == 1
    assert float(resources["cpuLimit"]) == 4
    assert resources["memoryLimit"] == 16.0
    assert "accelerator" not in _executor(doc, "evaluate").get("resources", {})


def test_gpu_count_and_cpu_only(tmp_path):
    doc = _compile(tmp_path, "--gpus", "8", "--accelerator-type", "nvidia.com/gpu")
    assert int(_executor(doc, "train")["resources"]["accelerator"]["resourceCount"]) == 8
    doc = _compile(tmp_path, "--gpus", "0")
    assert "accelerator" not in _executor(doc, "train")["resources"]


def test_every_parameter_has_default_and_description(tmp_path):
    doc = _compile(tmp_path)
    params = doc["root"]["inputDefinitions"]["parameters"]
    assert len(params) >= 25
    for name, spec in params.items():
        assert "defaultValue" in spec, name
        assert spec.get("description", "").strip(), name
    assert params["learning_rate"]["defaultValue"] == 1e-4
    assert params["data"]["defaultValue"] == "bundled:rotten-tomatoes"


def test_images_follow_one_scheme(tmp_path):
    doc = _compile(tmp_path, "--registry", "localhost:5001/ml", "--tag", "dev1")
    for stage in ("preprocess", "train", "evaluate", "export"):
        assert _executor(doc, stage)["image"] == f"localhost:5001/ml/kftune-{stage}:dev1"


def test_compiled_yaml_is_fresh(tmp_path):
    """pipelines/compiled/finetune.yaml must equal a fresh compile (run `make compile`)."""
    fresh = tmp_path / "fresh.yaml"
    assert main(["compile", "--output", str(fresh), "--registry", "ghcr.io/kftune", "--tag", "0.1.0"]) == 0
    assert COMPILED.read_text() == fresh.read_text(), "stale: run `make compile` and commit the YAML"


@pytest.mark.parametrize("flag", ["--gpus=-1"])
def test_bad_compile_flags(tmp_path, flag, capsys):
    assert main(["compile", "--output", str(tmp_path / "x.yaml"), flag]) == 2
    assert "--gpus must be >= 0" in capsys.readouterr().err
