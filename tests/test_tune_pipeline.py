"""The tune pipeline run by kfp.local on a small slice: a grid fan-out with a failing trial,
the best trial's parameters trained on train+validation, evaluated and exported; and the
``kftune tune`` command's checks."""

import json

import pytest
from mlflow import MlflowClient

from kftune.cli.main import main
from kftune.pipelines.local import run_tune_locally
from kftune.training.config import TrainConfig
from kftune.training.loop import train


def test_train_on_train_and_validation_keeps_the_last_epoch(tmp_path, prepared, tiny_model):
    config = TrainConfig(model=str(tiny_model), num_train_epochs=2, per_device_train_batch_size=16,
                         learning_rate=1e-12, early_stopping_patience=1, train_on="train+validation")
    history = train(config, prepared, tmp_path / "m")
    # a learning rate of 1e-12 never improves validation: without train_on the first epoch would be kept
    # and early stopping would end the run after it
    assert len(history["epochs"]) == 2 and history["best_epoch"] == 2


@pytest.mark.slow
def test_grid_search_pipeline_survives_a_failing_trial(tmp_path, small_csv, tiny_model):
    # Two processes per trial: batch 4096 leaves one batch for two ranks, so that trial fails.
    result = run_tune_locally({
        "data": str(small_csv), "model": str(tiny_model), "algorithm": "grid", "max_trials": 2,
        "search_space": '{"per_device_train_batch_size": [4096]}', "num_train_epochs": 1,
        "nproc_per_node": 2, "learning_rate": 1e-3, "train_on": "train+validation",
        "min_primary_score": 0.0, "quantize_int8": False, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }, tmp_path)
    trials = result.search["trials"]
    assert [t["params"]["per_device_train_batch_size"] for t in trials] == [32, 4096]  # defaults first
    assert [t["state"] for t in trials] == ["complete", "failed"]
    assert "torchrun exited with code" in trials[1]["error"]
    best = trials[0]  # the one that completed (picking among completed trials: test_tune.py's random search)
    assert result.best_params == best["params"]
    history = json.loads((result.model_dir / "training_history.json").read_text())
    assert history["config"]["per_device_train_batch_size"] == best["params"]["per_device_train_batch_size"]
    assert history["config"]["train_on"] == "train+validation"
    assert (result.export_dir / "model.onnx").is_file() and "accuracy" in result.evaluation["model"]
    # evaluate scored the test split artifact that the trials and the final training were not given
    assert result.evaluation["test_size"] == 30 and (result.run_dir / "preprocess" / "test_split" / "test").is_dir()
    html = result.search_report.read_text()
    assert html.count("<tr>") == 3 and "failed" in html
    # tracked: the search is one MLflow run with a child run per trial, and the final training a run of its own
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kftune").experiment_id])
    [search] = [r for r in runs if r.data.tags.get("search") == "grid"]
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == search.info.run_id),
                      key=lambda r: int(r.data.tags["trial"]))
    assert [(r.data.tags["trial.state"], r.info.status) for r in children] == [("complete", "FINISHED"),
                                                                               ("failed", "FAILED")]
    assert children[0].data.metrics["best_val_f1_macro"] == pytest.approx(trials[0]["score"])
    assert search.info.status == "FINISHED" and search.data.params["best.per_device_train_batch_size"] == "32"
    [final] = [r for r in runs if r not in children and r.info.run_id != search.info.run_id]
    assert final.data.metrics["test_model_accuracy"] == pytest.approx(result.evaluation["model"]["accuracy"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--search-space", '{"learning_rate": {"low": 1}}'], "search space: learning_rate: a range needs both"),
        (["--algorithm", "bayesianoptimization"], "algorithm 'bayesianoptimization' needs search_backend katib"),
        (["--algorithm", "annealing"], "argument --algorithm: invalid choice: 'annealing'"),
        (["--search-backend", "katib"], "creates a Katib Experiment on a cluster"),
        (["--max-trials", "0"], "max_trials must be >= 1"),
        (["--training-mode", "lora", "--search-space", '{"lora_r": [0, 4]}'], "lora_r must be >= 1"),
    ],
)
def test_tune_command_rejects_bad_settings_before_starting(tmp_path, flags, message, capsys):
    try:
        code = main(["tune", "--output-dir", str(tmp_path), *flags])
    except SystemExit as e:  # argparse refuses a flag value outside its choices
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
