"""Champion and challenger: a model that passes the gate is registered, but replaces the champion (and is served)
only when its gain over the champion, scored on the same test split, is not below the margin.

The stages' own functions (train, evaluate, export with its registration) run on the cue task of
tests/test_learning.py, where three epochs of the tiny BERT learn the rule and two optimizer steps do not, so the
weak run is worse than the champion by far more than the bootstrap's noise. The registry is MLflow's own, in an
embedded sqlite store (tests/test_tracking.py runs the same registry code against a real ``mlflow server``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from kftune.cli.main import main
from kftune.tracking.champion import deploys, promotion
from kftune.tracking.config import TrackingConfig, local_store
from kftune.tracking.registry import RegistryConfig, champion_history, register
from kftune.tracking.tracker import TRACKING_FILE
from tests.conftest import held_out_split
from tests.test_learning import make_cue_dataset

NAME = "kftune-champion-test"
LOOSE_GATE = {"min_primary_score": 0.0, "min_gain_over_baseline": -1.0, "max_loss_to_trivial": -1.0}
"""The gate's baseline checks opened wide (TF-IDF learns the cue words perfectly): this is about the champion."""


@pytest.fixture(scope="module")
def cues(tmp_path_factory, tiny_model) -> Path:
    return make_cue_dataset(tmp_path_factory.mktemp("champion-cues"), tiny_model)


def pipeline_run(work: Path, dataset: Path, tiny_model: Path, store: str, weights_of: Path | None = None,
                 **train) -> tuple[dict, dict | None, bool]:
    """train -> evaluate -> export (with registration), as the pipeline's stages do; returns (evaluate's result,
    the version registered, whether deploy would serve the export). ``weights_of``: a trained model whose weights
    this run's training ends with (a retraining that came out the same, without the minutes)."""
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate
    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model
    from kftune.tracking.stages import end_training_run, record_evaluation, record_export, start_training_run
    from kftune.training.config import TrainConfig
    from kftune.training.loop import train as run_training

    config = TrainConfig(model=str(tiny_model), num_train_epochs=3, learning_rate=3e-3, per_device_train_batch_size=8,
                         warmup_ratio=0.1, early_stopping_patience=0, save_steps=0, logging_steps=10, **train)
    model = work / "model"
    tracker = start_training_run(TrackingConfig(store, "champion"), {"max_steps": config.max_steps}, dataset, model,
                                 {"task": "classification"}, work.name)
    if weights_of is None:
        history = run_training(config, dataset, model)
    else:
        shutil.copytree(weights_of, model, ignore=shutil.ignore_patterns(TRACKING_FILE))
        history = json.loads((model / "training_history.json").read_text(encoding="utf-8"))
    end_training_run(tracker, model, history, model / "training_history.json")
    registry = RegistryConfig(NAME)
    gate = EvaluateConfig(**LOOSE_GATE)
    result = evaluate(model, dataset, held_out_split(dataset), gate, registry)
    record_evaluation(model, result, gate, {}, artifact_path=work / "evaluation")
    report = export_model(model, dataset, held_out_split(dataset), work / "export", ExportConfig(quantize_int8=False),
                          evaluation=result)
    registered = record_export(model, work / "export", report, work / "export", result, registry)
    return result, registered, deploys(result, registered)


def test_a_weaker_model_stays_challenger_and_a_model_not_worse_is_promoted(tmp_path, cues, tiny_model, capsys):
    from kftune.components.evaluate.report import evaluation_markdown, evaluation_report_html

    store = local_store(tmp_path)
    client = MlflowClient(store)

    # a first model: nothing to compare with, so it is version 1 and the champion
    first, registered, served = pipeline_run(tmp_path / "first", cues, tiny_model, store)
    assert first["passed"] and "champion" not in first
    assert first["promotion"]["promote"] and "no champion yet" in first["promotion"]["reason"]
    assert (registered["version"], registered["aliases"], served) == ("1", ["challenger", "champion"], True)

    # two optimizer steps: registered (the gate passed) but refused promotion by the paired interval
    weak, registered, served = pipeline_run(tmp_path / "weak", cues, tiny_model, store, max_steps=2)
    champion = weak["champion"]
    assert champion["version"] == "1" and champion["name"] == NAME
    assert champion["model"]["accuracy"] == pytest.approx(first["model"]["accuracy"])  # v1 rescored on the split
    low, high = champion["intervals"]["accuracy"]["ci_low"], champion["intervals"]["accuracy"]["ci_high"]
    assert low <= champion["delta"]["accuracy"] <= high and high < 0
    assert champion["delta"]["accuracy"] == pytest.approx(weak["model"]["accuracy"] - first["model"]["accuracy"])
    assert weak["passed"] and not weak["promotion"]["promote"]
    assert f"95% interval [{low:+.4f}, {high:+.4f}]" in weak["promotion"]["reason"]
    assert "lower bound below -0.01" in weak["promotion"]["reason"]
    assert (registered["version"], registered["aliases"], served) == ("2", ["challenger"], False)
    assert client.get_model_version_by_alias(NAME, "champion").version in ("1", 1)
    assert client.get_model_version(NAME, "2").tags["kftune.promotion"].startswith("refused: accuracy gain")
    markdown = evaluation_markdown(weak)
    assert "| champion (version 1) |" in markdown and "delta vs champion 1" in markdown
    assert "Promotion: keep the champion (accuracy gain over champion version 1" in markdown
    assert "<h2>Champion</h2>" in evaluation_report_html(weak)
    run = client.get_run(json.loads((tmp_path / "weak" / "model" / "tracking.json").read_text())["run_id"])
    assert run.data.tags["promotion"] == "keep champion" and run.data.tags["champion_version"] == "1"
    assert run.data.metrics["test_delta_vs_champion_accuracy_ci_high"] == pytest.approx(high)

    # the champion's weights again: not worse, so promoted (the interval's lower bound is within the margin)
    again, registered, served = pipeline_run(tmp_path / "again", cues, tiny_model, store,
                                             weights_of=tmp_path / "first" / "model")
    assert again["champion"]["version"] == "1"
    assert again["champion"]["intervals"]["accuracy"]["ci_low"] >= -0.01
    assert again["promotion"]["promote"] and "not worse, promoted" in again["promotion"]["reason"]
    assert (registered["version"], registered["aliases"], served) == ("3", ["challenger", "champion"], True)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "3"

    # rolled back by hand: the alias goes back to version 1, and every move is on record
    assert main(["rollback", NAME, "--tracking-uri", store, "--reason", "drift on Monday's traffic"]) == 0
    assert f"{NAME}: champion is version 1 (was 3), rollback by" in capsys.readouterr().out
    assert [(m["action"], m["version"], m["previous"]) for m in champion_history(store, NAME)] == [
        ("register", "1", None), ("promote", "3", "1"), ("rollback", "1", "3")]
    assert "gain over champion version 1" in champion_history(store, NAME)[1]["reason"]


def test_promotion_follows_the_gate_the_registry_and_the_interval():
    passed = {"passed": True, "task": "classification", "test_size": 50}
    registry = RegistryConfig()

    def champion(low, high, delta):
        return {"name": "m", "version": "4", "delta": {"accuracy": delta},
                "intervals": {"accuracy": {"ci_low": low, "ci_high": high}}}

    assert not promotion({**passed, "passed": False}, None, registry, True, 0.01)["promote"]
    untracked = promotion(passed, None, registry, False, 0.01)
    assert untracked["promote"] and deploys({**passed, "promotion": untracked}, None)
    off = promotion(passed, None, RegistryConfig("off"), True, 0.01)
    assert off["promote"] and "no model registry" in off["reason"]
    first = promotion(passed, None, registry, True, 0.01)
    # meant for the registry but not registered (the server went away): not served
    assert first["promote"] and not deploys({**passed, "promotion": first}, None)
    assert promotion(passed, champion(-0.01, 0.03, 0.01), registry, True, 0.01)["promote"]  # at the margin
    assert not promotion(passed, champion(-0.0101, 0.03, 0.01), registry, True, 0.01)["promote"]
    assert not promotion(passed, champion(-0.005, 0.03, 0.01), registry, True, 0.0)["promote"]  # not worse at all
    unread = promotion(passed, {"name": "m", "version": "4", "error": "its labels differ"}, registry, True, 0.01)
    assert not unread["promote"] and "its labels differ" in unread["reason"] and "kftune promote m" in unread["reason"]


def logged_export(tmp_path: Path, store: str) -> tuple:
    """A run in ``store`` with a (stand-in) export as its ``model`` artifacts: (its tracker, the artifacts' URI)."""
    from kftune.tracking.tracker import Tracker

    tracker = Tracker.start(TrackingConfig(store, "registry"), "export", {}, None, "export")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.onnx").write_bytes(b"onnx")
    tracker.artifact(tmp_path / "model", "model")
    return tracker, f"{MlflowClient(store).get_run(tracker.run_id).info.artifact_uri}/model"


def test_a_champion_that_moved_since_the_evaluation_is_not_replaced(tmp_path):
    """Two pipeline runs at once: each compared with version 1; the second to export finds version 2 champion."""
    store = local_store(tmp_path)
    tracker, source = logged_export(tmp_path, store)
    promote = {"promote": True, "reason": "not worse"}
    assert register(store, tracker.run_id, NAME, source, {})["promoted"]  # version 1, the first
    assert register(store, tracker.run_id, NAME, source, {}, promotion=promote, compared_with="1")["promoted"]
    late = register(store, tracker.run_id, NAME, source, {}, promotion=promote, compared_with="1")
    assert (late["version"], late["promoted"]) == ("3", False)
    tag = MlflowClient(store).get_model_version(NAME, "3").tags["kftune.promotion"]
    assert "the champion became version 2 after this model was compared with version 1" in tag


def test_promote_and_rollback_serve_the_published_copy_before_the_alias_moves(tmp_path, monkeypatch, capsys):
    """``kftune promote NAME VERSION --deploy-name`` against the fake Kubernetes API: what kftune sends is the
    version's published URI on the runtime of its task; an unpublished version is refused before anything is sent
    and before the alias moves."""
    from kubernetes.config import kube_config

    from kftune.tracking.registry import set_storage_uri
    from tests.fake_kube_api import FakeKServeScenario, FakeKubeApiServer, write_kubeconfig

    store = local_store(tmp_path)
    tracker, source = logged_export(tmp_path, store)
    for _ in range(2):
        register(store, tracker.run_id, NAME, source, {"task": "regression"})
    set_storage_uri(store, NAME, "2", "s3://models/scores/v2")  # what publish records; version 1 was never published

    with FakeKubeApiServer(kserve=FakeKServeScenario(stale_polls=0, ready_on_poll=1)) as server:
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION",
                            str(write_kubeconfig(tmp_path / "kubeconfig", server)))
        assert main(["promote", NAME, "2", "--tracking-uri", store, "--deploy-name", "scores",
                     "--deploy-namespace", "team-a", "--deploy-timeout-minutes", "1"]) == 0
        (post,) = server.calls("POST")
        model = post.body["spec"]["predictor"]["model"]
        assert (model["storageUri"], model["runtime"]) == ("s3://models/scores/v2", "kftune-onnx")
        assert post.body["metadata"]["namespace"] == "team-a"
        out = capsys.readouterr().out
        assert f"team-a/scores: serving {NAME} version 2 (s3://models/scores/v2) at http://" in out
        assert f"{NAME}: champion is version 2 (was 1), promote by" in out

        sent = len(server.requests)
        assert main(["rollback", NAME, "--tracking-uri", store, "--deploy-name", "scores",
                     "--deploy-namespace", "team-a"]) == 2
        assert f"{NAME} version 1 has no published copy to serve" in capsys.readouterr().err
        assert len(server.requests) == sent  # nothing sent
    assert str(MlflowClient(store).get_model_version_by_alias(NAME, "champion").version) == "2"
