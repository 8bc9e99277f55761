"""Components run by kfp.local inside small pipelines, and the whole pipeline on a slice."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from kfp import dsl

from kftune.cli.console import LOG_FILE
from kftune.cli.main import main
from kftune.components.preprocess import component as preprocess_component
from kftune.components.pretrain.pretrain import REPORT_FILE as PRETRAIN_REPORT
from kftune.components.train import component as train_component
from kftune.pipelines.local import run_pipeline_locally
from kftune.training.progress import PROGRESS_MARKER
from tests.test_tracking import assert_tracked


def test_preprocess_component_in_a_pipeline(tmp_path, small_csv, tiny_model):
    preprocess_op = preprocess_component.component()

    @dsl.pipeline(name="preprocess-only")
    def only_preprocess(data: str, model: str):
        preprocess_op(data=data, model=model, augment_copies=1)

    run_pipeline_locally(only_preprocess, {"data": str(small_csv), "model": str(tiny_model)}, tmp_path)
    [run_dir] = tmp_path.glob("preprocess-only-*")
    task_dir = run_dir / "preprocess"
    assert (task_dir / "dataset" / "labels.json").is_file()
    html = (task_dir / "report").read_text()
    assert "Removed per rule" in html and "data:image/png;base64" in html
    stats = json.loads((task_dir / "dataset" / "stats.json").read_text())
    assert stats["augmented_rows"] > 0
    # the test split is its own output artifact, the dataset's splits are train and validation
    assert sorted(p.name for p in (task_dir / "test_split").iterdir()) == ["test"]
    assert json.loads((task_dir / "dataset" / "splits" / "dataset_dict.json").read_text())["splits"] == [
        "train", "validation"]
    outputs = json.loads((task_dir / "executor_output.json").read_text())["artifacts"]
    assert outputs["test_split"]["artifacts"][0]["metadata"] == {"split": "test", "rows": stats["split_sizes"]["test"]}


def test_train_component_in_a_pipeline(tmp_path, small_csv, tiny_model):
    preprocess_op = preprocess_component.component()
    train_op = train_component.component()

    @dsl.pipeline(name="preprocess-train")
    def prep_and_train(data: str, model: str) -> dsl.Model:
        prep = preprocess_op(data=data, model=model)
        trained = train_op(dataset=prep.outputs["dataset"], model=model, num_train_epochs=1,
                           learning_rate=1e-3, per_device_train_batch_size=16)
        return trained.outputs["finetuned_model"]

    task = run_pipeline_locally(prep_and_train, {"data": str(small_csv), "model": str(tiny_model)}, tmp_path)
    model_dir = Path(task.output.path)
    assert (model_dir / "model.safetensors").is_file()
    assert json.loads((model_dir / "config.json").read_text())["id2label"]["1"] == "positive"
    curves = model_dir.parent / "curves"
    assert "kftune training" in curves.read_text()


@pytest.mark.slow
def test_full_pipeline_on_a_slice_through_the_cli(tmp_path, small_csv, small_frame, tiny_model, capsys):
    """``kftune run`` on a slice with every optional step on, as a user runs it: the quiet console (steps, one
    progress bar, the results; the full log in its file), domain-adaptive pretraining feeding train, the gate, the
    publication of the ONNX export, and the predict step on the texts given by ``--predict-input`` (predictions
    with their ids, as the step's artifact and at predict_output)."""
    texts = tmp_path / "new-reviews.csv"
    new = pd.DataFrame({"review_id": [f"new-{i}" for i in range(12)], "text": small_frame["text"].tail(12).tolist(),
                        "other": range(12)})
    new.to_csv(texts, index=False)
    scored = tmp_path / "scored" / "predictions.parquet"
    results_file = tmp_path / "results.json"
    published = tmp_path / "published"
    code = main(["run", "--data", str(small_csv), "--model", str(tiny_model), "--num-train-epochs", "2",
                 "--learning-rate", "1e-3", "--per-device-train-batch-size", "16", "--min-primary-score", "0",
                 "--publish-uri", str(published), "--pretrain", "--pretrain-corpus", "bundled:rotten-tomatoes-plots",
                 "--pretrain-max-steps", "5", "--pretrain-batch-size", "16",
                 "--predict-input", str(texts), "--predict-output", str(scored), "--predict-id-column", "review_id",
                 "--output-dir", str(tmp_path / "runs"), "--results", str(results_file)])
    assert code == 0
    captured = capsys.readouterr()
    results = json.loads(results_file.read_text())
    # the gate passed (min accuracy 0), so the ONNX export was published as v1 and latest points to it
    assert results["passed"] is True
    assert results["artifacts"]["published"] == str(published / "v1")
    manifest = json.loads((published / "v1" / "_MANIFEST.json").read_text())
    assert "model.onnx" in {f["path"] for f in manifest["files"]}
    assert (published / "v1" / "model.onnx").read_bytes() == Path(results["artifacts"]["onnx"]).read_bytes()
    for part in ("model", "baseline"):
        assert 0 <= results[part]["accuracy"] <= 1 and 0 <= results[part]["f1_macro"] <= 1
    assert results["baseline"]["name"] == "tfidf_logreg"
    # every delta with its paired bootstrap interval (tests/test_bootstrap.py checks their coverage)
    assert set(results["delta_intervals"]) == set(results["delta_vs_baseline"]) and results["resamples"] == 1000
    for metric, interval in results["delta_intervals"].items():
        assert interval["ci_low"] <= results["delta_vs_baseline"][metric] <= interval["ci_high"]
    assert Path(results["artifacts"]["onnx"]).is_file()
    assert (Path(results["artifacts"]["model"]) / "model.safetensors").is_file()
    assert results["test_size"] == 30
    run_dir = Path(results["artifacts"]["run_dir"])
    # scored on preprocess's test split artifact, which train and pretrain were not given
    assert sorted(p.name for p in (run_dir / "preprocess" / "test_split").iterdir()) == ["test"]
    assert "Confusion matrix" in (run_dir / "evaluate" / "report").read_text()

    # masked-LM pretraining on the bundled plots (and the training texts) ran, and train started from its model
    [report] = run_dir.rglob(PRETRAIN_REPORT)
    pretrained = json.loads(report.read_text())
    assert pretrained["steps"] == 5 and pretrained["texts"]["corpus"] > 1000
    assert pretrained["heldout_loss_after"] < pretrained["heldout_loss_before"]
    history = json.loads((Path(results["artifacts"]["model"]) / "training_history.json").read_text())
    assert history["config"]["model"] == str(report.parent)

    # predictions, after export
    artifact = Path(results["artifacts"]["predictions"])
    assert artifact == run_dir / "predict" / "predictions"
    assert artifact.read_bytes() == scored.read_bytes()  # Parquet, as predict_output's extension says
    out = pd.read_parquet(scored)
    assert out["id"].tolist() == new["review_id"].tolist()
    assert set(out["label"]) <= {"negative", "positive"} and out["probability"].between(0.5, 1).all()
    assert f"predictions:      {scored}" in captured.out

    # the console: steps, one progress bar, the results, at most 60 lines; everything else in the log file
    lines = (captured.out + captured.err).rstrip("\n").split("\n")  # a bar's \r redraws stay within its line
    assert len(lines) <= 60, "\n".join(lines)
    log_file = run_dir / LOG_FILE
    assert lines[:2] == [f"run directory: {run_dir}", f"log file:      {log_file}"]
    for step in ("preprocess", "pretrain", "train", "evaluate", "export", "publish", "predict"):
        assert any(re.match(rf"\d\d:\d\d:\d\d  {step} +started$", line) for line in lines), "\n".join(lines)
        done = rf"\d\d:\d\d:\d\d  {step} +done in (\d+ min \d\d|[\d.]+) s$"  # format_duration: 8.9 s, 1 min 14 s
        assert any(re.match(done, line) for line in lines), "\n".join(lines)
    [bar] = [line.split("\r")[-1] for line in lines if "steps [" in line]
    assert re.search(r"train +100%.*\| (\d+)/\1 steps \[.*loss [\d.]+, [\d.]+ samples/s, epoch 2 val f1_macro", bar)
    assert "kftune finetune results (test split)" in captured.out and "| fine-tuned model |" in captured.out
    assert "fine-tuned model" in captured.out and "baseline: tfidf_logreg" in captured.out
    assert f"log file:         {log_file}" in captured.out
    assert "executor_input" not in captured.out + captured.err
    log = log_file.read_text()
    assert "Got executor_input" in log and "[rank 0] training" in log and PROGRESS_MARKER in log
    assert "Task 'export' finished with status SUCCESS" in log

    # no tracking flag: the run is recorded in the embedded MLflow store beside the run directories
    # (tests/test_tracking.py: a real MLflow server, stopped mid-run), its curves in TensorBoard's event files
    assert_tracked(results, f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}", captured.out, tmp_path)


@pytest.mark.slow
def test_a_model_that_fails_the_gate_makes_no_predictions(tmp_path, small_csv, small_frame, tiny_model, capsys):
    """Also ``--tracking-uri`` naming a real ``mlflow server`` whose artifacts live in an S3 server (moto), as a
    cluster's would: the run is recorded there, the failed gate with it, and nothing is registered."""
    from mlflow import MlflowClient

    from tests.mlflow_server import MlflowServer
    from tests.object_servers import MotoS3

    texts = tmp_path / "new-reviews.csv"
    small_frame[["text"]].tail(5).to_csv(texts, index=False)
    scored = tmp_path / "scored.csv"
    results_file = tmp_path / "results.json"
    s3 = MotoS3().start()
    server = MlflowServer(tmp_path / "mlflow", s3_endpoint=s3.endpoint).start()
    try:
        code = main(["run", "--data", str(small_csv), "--model", str(tiny_model), "--num-train-epochs", "1",
                     "--max-steps", "2", "--min-primary-score", "1", "--predict-input", str(texts),
                     "--predict-output", str(scored), "--output-dir", str(tmp_path / "runs"), "--results",
                     str(results_file), "--tracking-uri", server.url])
        assert code == 0
        results = json.loads(results_file.read_text())
        client = MlflowClient(server.url)
        [run] = client.search_runs([client.get_experiment_by_name("kftune").experiment_id])
        assert run.info.run_id == results["tracking"]["run_id"] and run.info.status == "FINISHED"
        assert run.data.tags["gate"] == "failed" and run.data.tags["promotion"] == "keep champion"
        assert run.data.metrics["test_model_accuracy"] == pytest.approx(results["model"]["accuracy"])
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 1
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server, stored in S3
        assert "model/model.onnx" in {a.path for a in client.list_artifacts(run.info.run_id, "model")}
        import boto3

        stored = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                              region_name="us-east-1").list_objects_v2(Bucket="mlflow")["Contents"]
        assert any(o["Key"].endswith(f"{run.info.run_id}/artifacts/model/model.onnx") for o in stored)
        assert client.search_registered_models() == [] and "registered" not in results  # the gate failed
    finally:
        server.stop()
        s3.stop()
    assert results["passed"] is False and "predictions" not in results["artifacts"]
    assert not scored.exists() and not (Path(results["artifacts"]["run_dir"]) / "predict").exists()
    assert f"not predicted:    the gate failed, so the model made no predictions on {texts}" in capsys.readouterr().out
    # the export ran after evaluate and its model card holds evaluate's result: the gate and the test scores
    from huggingface_hub import ModelCard

    card = ModelCard.load(Path(results["artifacts"]["exported"]) / "README.md")
    assert card.data.kftune["gate"] == "failed"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == results["model"]


@pytest.mark.parametrize("flags, message", [
    (["--predict-output", "out.csv"], "predict_output is set but predict_input is empty"),
    (["--predict-input", "new.csv", "--predict-output", "out.txt"],
     "predict_output 'out.txt': cannot tell the format from its extension"),
    (["--predict-input", "new.csv", "--predict-batch-size", "0"], "predict_batch_size must be >= 1"),
])
def test_bad_predict_settings_stop_a_local_run_before_it_starts(tmp_path, flags, message, capsys):
    assert main(["run", *flags, "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kftune: error: {message}") and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_predict_input_is_read_and_checked_before_a_local_run_starts(tmp_path, small_csv, tiny_model, capsys):
    """Its files and columns are checked with the data, not after training."""
    bodies = tmp_path / "bodies.csv"
    pd.DataFrame({"body": ["a fine film"], "review_id": ["r1"]}).to_csv(bodies, index=False)
    for predict_input, message in ((tmp_path / "missing.csv", f"{tmp_path / 'missing.csv'}: no such file"),
                                   (bodies, f"{bodies}: no column 'text'; the columns are: body, review_id "
                                            "(set text_column)")):
        assert main(["run", "--data", str(small_csv), "--model", str(tiny_model), "--predict-input",
                     str(predict_input), "--output-dir", str(tmp_path / "runs")]) == 2
        assert capsys.readouterr().err.strip().startswith(f"kftune: error: {message}")
        assert not (tmp_path / "runs").exists()


def test_bad_data_stops_the_pipeline_before_training(tmp_path, tiny_model):
    from kftune.pipelines.finetune import finetune

    bad = tmp_path / "one-class.csv"
    pd.DataFrame({"text": [f"review {i}" for i in range(40)], "label": ["a"] * 40}).to_csv(bad, index=False)
    with pytest.raises(RuntimeError, match="preprocess"):
        run_pipeline_locally(finetune, {"data": str(bad), "model": str(tiny_model)}, tmp_path / "runs")
    [run_dir] = (tmp_path / "runs").glob("finetune-*")
    assert not (run_dir / "train").exists()
    assert not (run_dir / "preprocess" / "dataset").exists()
