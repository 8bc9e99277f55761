"""Experiment tracking against real MLflow: the embedded sqlite store a local run defaults to, and a real
``mlflow server`` on loopback (tests/mlflow_server.py) that is stopped mid-run and started again."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from kftune.cli.main import main
from kftune.tracking import Tracker, TrackingConfig, replay
from kftune.tracking.tracker import SPOOL_SUFFIX, spools
from tests.mlflow_server import MlflowServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


def only_run(client: MlflowClient, experiment: str = "kftune"):
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def losses(client: MlflowClient, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train_loss"))


def slice_run(tmp_path: Path, small_csv: Path, tiny_model: Path, *flags: str) -> tuple[int, dict]:
    """``kftune run`` on the 300-review slice: 2 epochs of the tiny model, a loss logged every 2 steps."""
    results = tmp_path / "results.json"
    code = main(["run", "--data", str(small_csv), "--model", str(tiny_model), "--num-train-epochs", "2",
                 "--learning-rate", "1e-3", "--per-device-train-batch-size", "16", "--logging-steps", "2",
                 "--min-primary-score", "0", "--no-quantize-int8", "--output-dir", str(tmp_path / "runs"),
                 "--results", str(results), *flags])
    return code, json.loads(results.read_text()) if results.is_file() else {}


def test_records_wait_while_the_server_is_down_and_replay_completes_the_run(tmp_path, server):
    tracking = TrackingConfig(server.url, experiment_name="spool")
    tracker = Tracker.start(tracking, "probe", {"task": "classification"}, tmp_path / "pending", "train")
    tracker.params({"learning_rate": 3e-4, "search": {"algorithm": "tpe"}})
    tracker.metrics({"train_loss": 0.9}, step=1)
    server.stop()
    try:
        started = time.monotonic()
        tracker.metrics({"train_loss": 0.7}, step=2)  # one retry, then the spool
        tracker.metrics({"train_loss": 0.5}, step=3)  # the server is known to be away: straight to the spool
        tracker.finish()
        assert time.monotonic() - started < 15
        [spool] = spools(tmp_path)
        assert [json.loads(line)["kind"] for line in spool.read_text().splitlines()] == ["run", "batch", "batch",
                                                                                         "end"]
    finally:
        server.start()
    client = MlflowClient(server.url)
    assert client.get_run(tracker.run_id).info.status == "RUNNING"  # its end waits in the spool
    assert replay(tmp_path) == {"files": 1, "records": 3}
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"learning_rate": "0.0003", "search.algorithm": "tpe"}
    assert losses(client, tracker.run_id) == [(1, 0.9), (2, 0.7), (3, 0.5)]
    assert not list(spools(tmp_path))


def test_a_refused_record_is_dropped_not_spooled(tmp_path, server):
    tracker = Tracker.start(TrackingConfig(server.url, experiment_name="refused"), "probe", {}, tmp_path, "train")
    tracker.params({"learning_rate": 1e-4})
    tracker.params({"learning_rate": 2e-4})  # MLflow refuses to change a param: the record is wrong, not the server
    tracker.metrics({"train_loss": 1.0}, step=1)
    assert not list(tmp_path.glob(f"*{SPOOL_SUFFIX}"))
    client = MlflowClient(server.url)
    assert client.get_run(tracker.run_id).data.params["learning_rate"] == "0.0001"
    assert losses(client, tracker.run_id) == [(1, 1.0)]


def test_tracking_off_or_unreachable_leaves_the_work_untracked(tmp_path, caplog):
    assert Tracker.start(TrackingConfig("off"), "x", {}, tmp_path, "train") is None
    assert Tracker.start(TrackingConfig(""), "x", {}, tmp_path, "train") is None
    with caplog.at_level("WARNING"):
        assert Tracker.start(TrackingConfig("http://127.0.0.1:9"), "x", {}, tmp_path, "train") is None
    assert "this run is not tracked" in caplog.text


def assert_tracked(results: dict, store: str, console: str, tmp_path: Path) -> None:
    """``kftune run``'s results (``--results``) were recorded, complete, in the MLflow store ``store``, and
    TensorBoard's own reader sees the loss curve in the model artifact (tests/test_pipeline_local.py's CLI run)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert results["tracking"]["tracking_uri"] == store
    client = MlflowClient(store)
    run = only_run(client)
    assert run.info.run_id == results["tracking"]["run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["kftune.pipeline"] == "finetune"
    assert f"MLflow run:       {run.info.run_id} (mlflow ui --backend-store-uri {store})" in console
    # the resolved settings, flat
    history = json.loads((Path(results["artifacts"]["model"]) / "training_history.json").read_text())
    assert run.data.params["learning_rate"] == str(history["config"]["learning_rate"])
    assert run.data.params["task"] == results["task"] and "evaluate.min_primary_score" in run.data.params
    # every logged step's loss, at its step, as training_history.json has it; each epoch's validation
    assert_losses(client, run.info.run_id, history)
    validation = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.value for m in validation] == pytest.approx([e["val_accuracy"] for e in history["epochs"]])
    # the test scores and their intervals, as the results say
    metrics = run.data.metrics
    assert metrics["test_model_accuracy"] == pytest.approx(results["model"]["accuracy"])
    assert metrics["test_passed"] == float(results["passed"])
    assert run.data.tags["gate"] == ("passed" if results["passed"] else "failed")
    for name, interval in results["delta_intervals"].items():
        assert metrics[f"test_delta_{name}_ci_low"] == pytest.approx(interval["ci_low"])
    assert metrics["data_rows_test"] == results["test_size"]
    # the dataset with its digest, and the artifacts: reports, evaluation, the exported model
    [dataset] = run.inputs.dataset_inputs
    assert len(dataset.dataset.digest) == 16 and dataset.tags[0].value == "training"
    assert {"model", "reports"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "model/model.onnx" in {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    downloaded = client.download_artifacts(run.info.run_id, "reports/evaluation.json", str(tmp_path))
    evaluation = json.loads(Path(downloaded).read_text())
    assert evaluation["model"]["confusion_matrix"] and evaluation["passed"] == results["passed"]

    # the gate passed: the export is version 1 of the task's registered model, its champion
    if results["passed"]:
        registered = results["registered"]
        assert registered == {"name": f"kftune-{results['task']}", "version": "1",
                              "aliases": ["challenger", "champion"], "promoted": True, "tracking_uri": store}
        assert results["promotion"]["promote"] and "no champion yet" in results["promotion"]["reason"]
        version = client.get_model_version_by_alias(registered["name"], "champion")
        assert str(version.version) == "1" and version.run_id == run.info.run_id
        assert version.source.endswith("/model") and version.tags["model_card"] == "model/README.md"
        assert run.data.tags["registered_version"] == "1"

    events = EventAccumulator(results["artifacts"]["tensorboard"])
    events.Reload()
    curve = events.Scalars("train/loss")
    assert [e.step for e in curve] == [s["step"] for s in history["steps"]]
    assert [e.value for e in curve] == pytest.approx([s["loss"] for s in history["steps"]], rel=1e-5)
    assert len(events.Scalars("val/accuracy")) == len(history["epochs"])


def assert_losses(client: MlflowClient, run_id: str, history: dict) -> None:
    recorded = losses(client, run_id)
    assert [step for step, _ in recorded] == [s["step"] for s in history["steps"]]
    assert [loss for _, loss in recorded] == pytest.approx([s["loss"] for s in history["steps"]])


def test_a_tracking_server_stopped_mid_training_costs_nothing_and_replay_completes_the_run(
        tmp_path, prepared, tiny_model, server, monkeypatch):
    """What the train component does (start the run, train under torchrun's launcher with the run in the
    workers' environment, end its part), with the server killed once the first losses are in."""
    from kftune.tracking.stages import end_training_run, start_training_run
    from kftune.training.config import TrainConfig
    from kftune.training.launch import launch_training

    client, experiment, pending = MlflowClient(server.url), "mid-training", tmp_path / "pending"
    monkeypatch.setenv("KFTUNE_TRACKING_SPOOL_DIR", str(pending))  # as kftune run names its run directory's
    config = TrainConfig(model=str(tiny_model), num_train_epochs=3, learning_rate=1e-3,
                         per_device_train_batch_size=16, logging_steps=1)
    tracker = start_training_run(TrackingConfig(server.url, experiment), {"learning_rate": config.learning_rate},
                                 prepared, tmp_path / "model", {"task": "classification"}, "mid-training")
    stopped = threading.Event()

    def stop_after_the_first_losses():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not stopped.is_set():
            if client.get_metric_history(tracker.run_id, "train_loss"):
                server.stop()
                break
            time.sleep(0.1)
        stopped.set()

    watcher = threading.Thread(target=stop_after_the_first_losses, daemon=True)
    watcher.start()
    try:
        history = launch_training(config, prepared, tmp_path / "model", env=tracker.env())
        end_training_run(tracker, tmp_path / "model", history, tmp_path / "model" / "training_history.json")
        tracker.finish()
    finally:
        stopped.set()
        watcher.join()
        if server.proc is None:
            server.start()
    assert len(history["epochs"]) == 3  # training went on
    assert {p.name.split("-", 1)[1] for p in spools(pending)} == {f"train-worker{SPOOL_SUFFIX}", f"train{SPOOL_SUFFIX}"}
    assert client.get_run(tracker.run_id).info.status == "RUNNING"
    recorded_before = len(losses(client, tracker.run_id))
    assert 0 < recorded_before < len(history["steps"])

    assert main(["track", "replay", str(pending)]) == 0
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and not list(spools(pending))
    assert_losses(client, tracker.run_id, history)
    assert run.data.metrics["best_epoch"] == history["best_epoch"]
    assert "reports" in {a.path for a in client.list_artifacts(tracker.run_id)}


def test_the_first_version_is_champion_and_only_a_promotion_moves_it(tmp_path, server, capsys):
    from kftune.tracking.registry import champion_history, register

    client, name = MlflowClient(server.url), "kftune-registry-test"
    tracker = Tracker.start(TrackingConfig(server.url, "registry"), "export", {}, None, "export")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.onnx").write_bytes(b"onnx")
    tracker.artifact(tmp_path / "model", "model")
    source = f"{client.get_run(tracker.run_id).info.artifact_uri}/model"
    first = register(server.url, tracker.run_id, name, source, {"task": "classification"})
    second = register(server.url, tracker.run_id, name, source, {"task": "classification"})
    assert (first["version"], first["aliases"]) == ("1", ["challenger", "champion"])
    assert (second["version"], second["aliases"]) == ("2", ["challenger"])  # registered, not promoted
    assert client.get_model_version_by_alias(name, "champion").version == "1"

    assert main(["promote", name, "2", "--reason", "better on the new data", "--tracking-uri", server.url]) == 0
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert main(["rollback", name, "--tracking-uri", server.url]) == 0
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    out = capsys.readouterr().out
    assert f"{name}: champion is version 2 (was 1), promote by" in out
    assert f"{name}: champion is version 1 (was 2), rollback by" in out
    moves = champion_history(server.url, name)
    assert [(m["action"], m["version"], m["previous"]) for m in moves] == [
        ("register", "1", None), ("promote", "2", "1"), ("rollback", "1", "2")]
    assert moves[1]["reason"] == "better on the new data" and all(m["by"] and m["time"] for m in moves)
    assert client.get_model_version(name, "2").tags["kftune.promote"].endswith("better on the new data")
    assert client.get_model_version(name, "1").tags["kftune.rollback"].endswith("rolled back from version 2")
    # a version that does not exist is refused, and the champion stays
    assert main(["promote", name, "9", "--tracking-uri", server.url]) == 2
    assert "has no version 9" in capsys.readouterr().err
    assert client.get_model_version_by_alias(name, "champion").version == "1"


def test_an_empty_experiment_name_is_refused_before_the_run_starts(tmp_path, capsys):
    assert main(["run", "--experiment-name", " ", "--output-dir", str(tmp_path)]) == 2
    assert "experiment_name is empty" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_on_a_cluster_each_stage_tags_the_image_it_runs_and_its_digest(tmp_path, monkeypatch):
    """In KFP's executor pod (KFP_POD_NAME) the run is tagged with the image of the pod's main container and its
    digest, read from the pod's status through the Kubernetes API (the fake API server answers with the pod a
    test puts there); a pod that cannot be read costs the tags, not the run."""
    from kubernetes.config import kube_config

    from kftune.cluster import kube as kube_helpers
    from kftune.tracking.config import local_store
    from tests.fake_kube_api import FakeKubeApiServer, write_kubeconfig

    def container(name, image, digest):
        return {"name": name, "image": image, "imageID": digest, "ready": True, "restartCount": 0}

    launcher = "ghcr.io/kubeflow/kfp-launcher"

    store = local_store(tmp_path)
    with FakeKubeApiServer() as server:
        server.named_pods[("team-a", "finetune-x7k2p-train")] = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "finetune-x7k2p-train", "namespace": "team-a"},
            "status": {"containerStatuses": [
                container("kfp-launcher", f"{launcher}:2.5.0", f"{launcher}@sha256:1e"),
                container("main", "ghcr.io/kftune/kftune-train:0.1.0", "ghcr.io/kftune/kftune-train@sha256:9f2c")]}}
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION",
                            str(write_kubeconfig(tmp_path / "kubeconfig", server)))
        (tmp_path / "namespace").write_text("team-a")
        monkeypatch.setattr(kube_helpers, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
        monkeypatch.setenv("KFP_POD_NAME", "finetune-x7k2p-train")
        tracker = Tracker.start(TrackingConfig(store, "images"), "train", {}, None, "train")
        tags = MlflowClient(store).get_run(tracker.run_id).data.tags
        assert tags["kftune.image.train"] == "ghcr.io/kftune/kftune-train:0.1.0"
        assert tags["kftune.image_digest.train"] == "ghcr.io/kftune/kftune-train@sha256:9f2c"
        [read] = server.calls("GET", "/pods/")
        assert read.path == "/api/v1/namespaces/team-a/pods/finetune-x7k2p-train"

        monkeypatch.setenv("KFP_POD_NAME", "a-pod-that-is-gone")
        tracker = Tracker.start(TrackingConfig(store, "images"), "train", {}, None, "train")
        assert tracker is not None
        assert not any(k.startswith("kftune.image") for k in MlflowClient(store).get_run(tracker.run_id).data.tags)
