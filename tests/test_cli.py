"""The CLI: help for every flag, one-line errors, and --debug tracebacks."""

from __future__ import annotations

import re
import subprocess
import sys

import pandas as pd
import pytest

from kftune.cli.main import build_parser, main
from kftune.cluster.resources import TrainResources
from kftune.pipelines import finetune
from kftune.settings.catalog import settings_of


def test_run_help_covers_every_run_parameter_but_the_cluster_ones():
    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    cluster_only = {s.name for s in settings_of(TrainResources)} | {"s3_secret", "gcs_secret"}
    for name in finetune.finetune.component_spec.inputs:
        flag = re.escape("--" + name.replace("_", "-"))
        assert bool(re.search(flag + r"(?![\w-])", run_help)) == (name not in cluster_only), name
    assert "--results" in run_help


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "kftune", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: ["--data", str(d / "missing.csv")], "missing.csv: no such file or directory"),
        (lambda d: ["--data", str(d / "ok.csv"), "--text-column", "body"], "no column 'body'"),
        (lambda d: ["--data", str(d / "ok.csv"), "--learning-rate", "-1"], "learning_rate must be in (0, 1)"),
        (lambda d: ["--data", str(d / "one.csv")], "has a single class"),
        (lambda d: ["--data", str(d / "ok.csv"), "--model", str(d / "no-model")], "no-model': no such directory"),
        (lambda d: ["--data", str(d / "ok.csv"), "--training-mode", "adapters"],
         "argument --training-mode: invalid choice: 'adapters'"),
        (lambda d: ["--data", str(d / "ok.csv"), "--num-nodes", "2"], "num_nodes > 1 trains as a Kubeflow Trainer"),
        (lambda d: ["--data", str(d / "ok.csv"), "--deploy-name", "sentiment"],
         "deploy_name creates a KServe InferenceService on a cluster"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, make_args, message):
    texts = [f"review {i}" for i in range(40)]
    pd.DataFrame({"text": texts, "label": ["a", "b"] * 20}).to_csv(tmp_path / "ok.csv", index=False)
    pd.DataFrame({"text": texts, "label": ["a"] * 40}).to_csv(tmp_path / "one.csv", index=False)
    result = _run_cli("run", *make_args(tmp_path), "--output-dir", str(tmp_path / "runs"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("kftune: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "runs").exists()  # stopped before any pipeline step


def test_debug_shows_traceback(tmp_path):
    result = _run_cli("--debug", "run", "--data", str(tmp_path / "missing.csv"))
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "DataError" in result.stderr


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "kftune 0.1.0" in capsys.readouterr().out


def test_a_renamed_setting_is_a_one_line_error_naming_the_new_one(capsys):
    for command in ("run", "tune"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--min-accuracy", "0.8"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1, err
        assert "--min-accuracy is now --min-primary-score" in err
