"""The Kubeflow Model Registry as a second registry: what kftune sends it through the official client, and how it
reads the answers.

Its own server cannot run here, so the tests run against tests/fake_model_registry.py (FakeModelRegistryServer, a
fake that stores what it is sent and decides nothing); MLflow's registry, which decides, is its own in an embedded
sqlite store. No training: the evaluation and the export directory are built by hand.
"""

from __future__ import annotations

import json
import logging

import pytest
from mlflow import MlflowClient

from kftune import __version__
from kftune.cli.main import main
from kftune.tracking.config import TrackingConfig, local_store
from kftune.tracking.kubeflow_registry import ENV_TOKEN
from kftune.tracking.registry import REGISTERED_FILE, RegistryConfig
from kftune.tracking.stages import record_export, record_publish
from kftune.tracking.tracker import Tracker
from tests.fake_model_registry import FakeModelRegistryServer

NAME = "kftune-kubeflow-registry-test"
EVALUATION = {"passed": True, "task": "classification", "primary_metric": "accuracy", "model": {"accuracy": 0.875},
              "test_size": 64}
REPORT = {"format": "onnx", "opset": 17, "parity": {"max_abs_diff": 1e-6}, "size_bytes": {"fp32": 2**20}}


@pytest.fixture()
def store(tmp_path):
    return local_store(tmp_path)


def _export(tmp_path, store, registry: RegistryConfig, index: int = 1) -> tuple[dict | None, object, str]:
    """An exported model of a tracked run, through export's recording: (what it registered, its directory, the
    MLflow run id)."""
    tracker = Tracker.start(TrackingConfig(store, "kubeflow-registry"), f"run-{index}", {}, None, "train")
    model_dir, export_dir = tmp_path / f"model-{index}", tmp_path / f"export-{index}"
    model_dir.mkdir()
    export_dir.mkdir()
    (export_dir / "model.onnx").write_bytes(b"onnx")
    tracker.write(model_dir)
    registered = record_export(model_dir, export_dir, REPORT, export_dir, EVALUATION, registry)
    return registered, export_dir, tracker.run_id


def _value(properties: dict, key: str):
    """A custom property as the API carries it (a MetadataValue) back to its Python value."""
    meta = properties[key]
    kind = meta["metadataType"][len("Metadata"):-len("Value")].lower()
    return meta[f"{kind}_value"]


def _last_properties(fake, path_end: str) -> dict:
    return fake.sent("PATCH", path_end)[-1]["customProperties"]


def test_export_registers_the_version_there_too_and_publish_points_its_artifact_at_the_copy(tmp_path, store,
                                                                                            monkeypatch):
    monkeypatch.setenv(ENV_TOKEN, "registry-token")
    with FakeModelRegistryServer() as fake:
        registered, export_dir, run_id = _export(tmp_path, store, RegistryConfig(NAME, model_registry_url=fake.url))
        assert (registered["version"], registered["model_registry_url"]) == ("1", fake.url)
        assert json.loads((export_dir / REGISTERED_FILE).read_text())["model_registry_url"] == fake.url
        assert {r["authorization"] for r in fake.requests} == {"Bearer registry-token"}

        (model,) = fake.sent("POST", "/registered_models")
        assert model["name"] == NAME
        (version,) = fake.sent("POST", "/model_versions")
        assert version["name"] == "1"  # the MLflow version number
        assert version["registeredModelId"] == fake.named("registered_models", NAME)["id"]
        properties = version["customProperties"]
        source = f"{MlflowClient(store).get_run(run_id).info.artifact_uri}/model"
        assert {k: _value(properties, k) for k in ("task", "gate", "test_accuracy", "test_size", "kftune.version",
                                                    "mlflow.run_id", "mlflow.source")} == {
            "task": "classification", "gate": "passed", "test_accuracy": 0.875, "test_size": "64",
            "kftune.version": __version__, "mlflow.run_id": run_id, "mlflow.source": source}
        (artifact,) = fake.sent("POST", f"/model_versions/{fake.named('model_versions', '1')['id']}/artifacts")
        assert (artifact["uri"], artifact["modelFormatName"], artifact["modelFormatVersion"]) == (source, "onnx", "17")

        # the first version: challenger and champion, on the registered model and on the version
        assert {k: _value(_last_properties(fake, "/registered_models/" + fake.named("registered_models", NAME)["id"]),
                          k) for k in ("kftune.champion", "kftune.challenger")} == {
            "kftune.champion": "1", "kftune.challenger": "1"}
        version_path = "/model_versions/" + fake.named("model_versions", "1")["id"]
        assert _value(_last_properties(fake, version_path), "kftune.aliases") == "challenger,champion"

        record_publish(export_dir, "s3://models/sentiment/v1")
        (patched,) = fake.sent("PATCH", f"/model_artifacts/{fake.named('model_artifacts', NAME)['id']}")
        assert patched["uri"] == "s3://models/sentiment/v1"
        assert _value(_last_properties(fake, version_path), "kftune.storage_uri") == "s3://models/sentiment/v1"
    tags = MlflowClient(store).get_model_version(NAME, "1").tags
    assert tags["kftune.storage_uri"] == "s3://models/sentiment/v1"  # MLflow's registry has it as before


def _seed(fake, version_aliases: dict[str, str]) -> dict:
    """What the Kubeflow registry answers with: a registered model NAME (champion and challenger version 1) whose
    versions hold ``version_aliases``."""
    model = fake._new("registered_models", {"name": NAME, "customProperties": {
        "kftune.champion": {"string_value": "1", "metadataType": "MetadataStringValue"},
        "kftune.challenger": {"string_value": "1", "metadataType": "MetadataStringValue"}}})
    for name, aliases in version_aliases.items():
        fake._new("model_versions", {"name": name, "registeredModelId": model["id"], "customProperties": {
            "kftune.aliases": {"string_value": aliases, "metadataType": "MetadataStringValue"}}})
    return model


def test_an_existing_registered_model_is_reused_and_champion_moves_are_mirrored(tmp_path, store, capsys):
    """Version 2 becomes challenger (MLflow's decision: no promotion was asked for); ``kftune promote`` and
    ``kftune rollback --model-registry-url`` then move the champion in both registries."""
    _export(tmp_path, store, RegistryConfig(NAME))  # MLflow version 1, before the Kubeflow registry was named
    with FakeModelRegistryServer() as fake:
        model = _seed(fake, {"1": "challenger,champion"})
        registered, _, _ = _export(tmp_path, store, RegistryConfig(NAME, model_registry_url=fake.url), index=2)
        assert (registered["version"], registered["aliases"]) == ("2", ["challenger"])
        assert fake.sent("POST", "/registered_models") == []  # found by name, not created
        (version,) = fake.sent("POST", "/model_versions")
        assert (version["name"], version["registeredModelId"]) == ("2", model["id"])
        model_path = f"/registered_models/{model['id']}"
        v1_path, v2_path = (f"/model_versions/{fake.named('model_versions', v)['id']}" for v in ("1", "2"))
        assert {k: _value(_last_properties(fake, model_path), k) for k in ("kftune.champion", "kftune.challenger")} \
            == {"kftune.champion": "1", "kftune.challenger": "2"}
        assert _value(_last_properties(fake, v1_path), "kftune.aliases") == "champion"  # challenger moved on
        assert _value(_last_properties(fake, v2_path), "kftune.aliases") == "challenger"

        assert main(["promote", NAME, "2", "--reason", "better on the new data", "--tracking-uri", store,
                     "--model-registry-url", fake.url]) == 0
        assert _value(_last_properties(fake, model_path), "kftune.champion") == "2"
        assert _value(_last_properties(fake, v1_path), "kftune.aliases") == ""
        v2 = _last_properties(fake, v2_path)
        assert _value(v2, "kftune.aliases") == "challenger,champion"
        assert _value(v2, "kftune.promote").endswith("better on the new data")

        assert main(["rollback", NAME, "--tracking-uri", store, "--model-registry-url", fake.url]) == 0
        assert _value(_last_properties(fake, model_path), "kftune.champion") == "1"
        assert _value(_last_properties(fake, v1_path), "kftune.aliases") == "champion"
        assert _value(_last_properties(fake, v2_path), "kftune.aliases") == "challenger"
    assert str(MlflowClient(store).get_model_version_by_alias(NAME, "champion").version) == "1"
    assert "champion is version 1 (was 2), rollback" in capsys.readouterr().out


def test_a_registry_that_fails_or_cannot_be_reached_is_a_warning(tmp_path, store, caplog):
    """Export, publish and promote go on; MLflow's registry has the version and the moves."""
    caplog.set_level(logging.WARNING, logger="kftune")
    with FakeModelRegistryServer() as fake:
        fake.fail_with = 503
        registered, export_dir, _ = _export(tmp_path, store, RegistryConfig(NAME, model_registry_url=fake.url))
        assert (registered["version"], registered["model_registry_url"]) == ("1", "")
        assert f"model registry: could not register {NAME} version 1 at {fake.url}" in caplog.text
        sent = len(fake.requests)
        record_publish(export_dir, "s3://models/sentiment/v1")
        assert len(fake.requests) == sent  # not registered there: nothing to point at the copy
        unreachable = fake.url
    _export(tmp_path, store, RegistryConfig(NAME), index=2)
    assert main(["promote", NAME, "2", "--tracking-uri", store, "--model-registry-url", unreachable]) == 0
    assert f"model registry: could not move {NAME}'s champion to version 2 at {unreachable}" in caplog.text
    assert str(MlflowClient(store).get_model_version_by_alias(NAME, "champion").version) == "2"
