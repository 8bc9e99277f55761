"""The deploy component: the InferenceService spec (checked against the kserve SDK's models), and
creating, updating and following one against a fake Kubernetes API server playing a fake KServe
controller (no real API server or KServe can run here).

The rollouts whose outcome kftune reports (revision, URL, traffic split) are fed recorded InferenceService
statuses (tests/fixtures/kserve/, real KServe shapes) that the fake serves as they are: the tests assert what
kftune sends and what it reads, not a split or a revision the fake controller worked out."""

import contextlib
import copy
import re
from pathlib import Path

import kserve.models as kserve_models
import kubernetes.client.models as k8s_models
import pytest
from kubernetes import client
from kubernetes.config import kube_config

from kftune.cluster import kube as kube_helpers
from kftune.cluster.lifecycle import ResourceApi
from kftune.components.deploy import deploy as deploy_module
from kftune.components.deploy.config import DeployConfig
from kftune.components.deploy.deploy import (
    OTHER_IMPLEMENTATIONS,
    DeployRequest,
    _Target,
    build_inference_service,
    deploy_inference_service,
    deploy_request,
    inference_service_doc,
    is_current,
    is_ready,
    update_patch,
)
from kftune.errors import ConfigError, KftuneError
from tests.fake_kube_api import (
    FIXTURES,
    FakeKServeScenario,
    FakeKubeApiServer,
    merge_patch,
    recorded,
    write_kubeconfig,
)

FAST = dict(poll_seconds=0.01, timeout_seconds=10, failure_grace_seconds=0, retry_delay_seconds=0.01)
ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/team-a/inferenceservices"
# Recorded statuses of the InferenceService sentiment in team-a (tests/fixtures/kserve/): created (revision 1 on its
# way, then Ready), updated with a 20 % canary (revision 2 on its way, then the split), promoted, pinned back.
CREATING = recorded("kserve/create-1-progressing.status.json")
R1_READY = recorded("kserve/create-2-ready.status.json")
R2_PROGRESSING = recorded("kserve/canary-1-progressing.status.json")
R2_CANARY = recorded("kserve/canary-2-split.status.json")
PROMOTED = recorded("kserve/promoted.status.json")
PINNED = recorded("kserve/pinned.status.json")
R1, R2 = "sentiment-predictor-00001", "sentiment-predictor-00002"
URL = "http://sentiment.team-a.example.com"
RESOURCES = {"cpu": "1", "memory": "2Gi"}  # DeployConfig's serving_cpu and serving_memory


def make_request(**overrides) -> DeployRequest:
    values = dict(model_uri="s3://models/sentiment/v1", name="sentiment", namespace="team-a")
    values.update(overrides)
    return DeployRequest(**values)


@pytest.fixture
def kube():
    """Start a FakeKubeApiServer playing a FakeKServeScenario; returns the server and a real API client."""
    with contextlib.ExitStack() as stack:

        def start(**scenario) -> tuple[FakeKubeApiServer, client.ApiClient]:
            server = stack.enter_context(FakeKubeApiServer(kserve=FakeKServeScenario(**scenario)))
            api_client = server.api_client()
            stack.callback(api_client.close)
            return server, api_client

        yield start


def deploy(api_client, request: DeployRequest, lines: list[str] | None = None, **options) -> dict:
    log = lines.append if lines is not None else (lambda line: None)
    return deploy_inference_service(request, api_client, log=log, **{**FAST, **options})


def polls_after(server: FakeKubeApiServer, method: str) -> int:
    """GETs of the InferenceService after the last ``method`` request (POST or PATCH)."""
    last = max(i for i, r in enumerate(server.requests) if r.method == method)
    return sum(1 for r in server.requests[last + 1 :] if r.method == "GET")


# The Knative types the kserve SDK names but does not model: their JSON fields (knative.dev/pkg/apis Condition and
# duck/v1 Addressable, knative.dev/serving/pkg/apis/serving/v1 TrafficTarget).
KNATIVE = {
    "KnativeCondition": {"type": "str", "status": "str", "severity": "str", "lastTransitionTime": "str",
                         "reason": "str", "message": "str"},
    "KnativeAddressable": {"name": "str", "url": "KnativeURL", "CACerts": "str", "audience": "str"},
    "KnativeDevServingPkgApisServingV1TrafficTarget": {"tag": "str", "revisionName": "str", "configurationName": "str",
                                                       "latestRevision": "bool", "percent": "int", "url": "KnativeURL"},
}  # fmt: skip


def sdk_model(value, klass: str):
    """``value``, a JSON document, as the SDK model ``klass`` (kserve's or the Kubernetes client's):
    every key must be a field of the model and every value of the field's type; the model's own
    client-side validation (required fields) runs as it is built."""
    if value is None:
        return None
    if klass.startswith("list["):
        assert isinstance(value, list), f"{klass}: {value!r}"
        return [sdk_model(item, klass[5:-1]) for item in value]
    if klass.startswith("dict("):
        assert isinstance(value, dict), f"{klass}: {value!r}"
        inner = klass[5:-1].split(", ", 1)[1]
        return {key: sdk_model(item, inner) for key, item in value.items()}
    primitives = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "KnativeURL": str,
                  "V1Time": str}
    if klass in KNATIVE:
        assert isinstance(value, dict) and not set(value) - set(KNATIVE[klass]), f"{klass}: {value!r}"
        return {key: sdk_model(item, KNATIVE[klass][key]) for key, item in value.items()}
    if klass in primitives:
        assert isinstance(value, primitives[klass]) and not (klass == "int" and isinstance(value, bool)), (
            f"{klass}: {value!r}"
        )
        return value
    model = getattr(kserve_models, klass, None) or getattr(k8s_models, klass)
    fields = {json_key: attr for attr, json_key in model.attribute_map.items()}
    unknown = set(value) - set(fields)
    assert not unknown, f"{klass} has no field(s) {sorted(unknown)}"
    return model(**{fields[key]: sdk_model(item, model.openapi_types[fields[key]]) for key, item in value.items()})


# --- the spec -----------------------------------------------------------------------------------


def test_spec_passes_the_sdk_models_and_says_what_was_asked():
    request = make_request(
        model_uri="gs://models/sentiment/v3", min_replicas=0, max_replicas=4, cpu="500m", memory="3Gi",
        service_account="model-reader", runtime="kftune-onnx-gpu", model_format="kftune-onnx",
    )  # fmt: skip
    doc = inference_service_doc(request)
    isvc = sdk_model(doc, "V1beta1InferenceService")
    with client.ApiClient() as serializer:
        rebuilt = serializer.sanitize_for_serialization(isvc)
    assert rebuilt["spec"]["predictor"]["model"].pop("name") == ""  # the SDK's default, left to KServe
    assert rebuilt == doc

    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    assert doc["metadata"] == {
        "name": "sentiment",
        "namespace": "team-a",
        "labels": {"app.kubernetes.io/managed-by": "kftune", "app.kubernetes.io/component": "deploy"},
    }
    predictor = doc["spec"]["predictor"]
    assert predictor == {
        "serviceAccountName": "model-reader",
        "minReplicas": 0,
        "maxReplicas": 4,
        "model": {
            "modelFormat": {"name": "kftune-onnx"},
            "runtime": "kftune-onnx-gpu",
            "storageUri": "gs://models/sentiment/v3",
            "resources": {"requests": {"cpu": "500m", "memory": "3Gi"}, "limits": {"cpu": "500m", "memory": "3Gi"}},
        },
    }
    assert set(doc["spec"]) == {"predictor"}


def test_canary_is_set_only_on_an_update():
    request = make_request(canary_traffic_percent=25)
    assert "canaryTrafficPercent" not in inference_service_doc(request)["spec"]["predictor"]
    assert inference_service_doc(request, update=True)["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert build_inference_service(request, update=True).spec.predictor.canary_traffic_percent == 25
    assert build_inference_service(request).spec.predictor.canary_traffic_percent is None
    assert "canaryTrafficPercent" not in inference_service_doc(make_request(), update=True)["spec"]["predictor"]


def test_defaults_are_the_kftune_runtime_and_its_service_account():
    predictor = inference_service_doc(make_request())["spec"]["predictor"]
    assert predictor["model"]["runtime"] == "kftune-onnx"
    assert predictor["model"]["modelFormat"] == {"name": "kftune-onnx"}
    assert predictor["serviceAccountName"] == "kftune-serving"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 1)
    assert predictor["model"]["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    # "" leaves the pods to the namespace's default service account
    assert "serviceAccountName" not in inference_service_doc(make_request(service_account=""))["spec"]["predictor"]


def test_update_patch_removes_an_old_canary_and_other_ways_of_naming_the_model():
    existing = {
        "metadata": {"name": "sentiment", "namespace": "team-a", "annotations": {"owner": "ml-team"}},
        "spec": {
            "predictor": {"canaryTrafficPercent": 10, "sklearn": {"storageUri": "gs://old/model"}, "minReplicas": 2},
            "transformer": {"containers": [{"name": "kserve-container", "image": "example/transformer:1"}]},
        },
    }
    patch = update_patch(make_request(), existing)
    sdk_model(patch["spec"]["predictor"], "V1beta1PredictorSpec")  # every key is a predictor field
    assert patch["spec"]["predictor"]["canaryTrafficPercent"] is None
    assert patch["spec"]["predictor"]["sklearn"] is None
    result = merge_patch(existing, patch)
    predictor = result["spec"]["predictor"]
    assert "canaryTrafficPercent" not in predictor and "sklearn" not in predictor
    assert predictor["model"]["storageUri"] == "s3://models/sentiment/v1" and predictor["minReplicas"] == 1
    assert result["spec"]["transformer"] == existing["spec"]["transformer"]  # kept: kftune does not set it
    assert result["metadata"]["annotations"] == {"owner": "ml-team"}
    assert (
        update_patch(make_request(canary_traffic_percent=0), existing)["spec"]["predictor"]["canaryTrafficPercent"] == 0
    )


def test_the_other_implementations_are_predictor_fields():
    fields = set(kserve_models.V1beta1PredictorSpec.attribute_map.values())
    assert set(OTHER_IMPLEMENTATIONS) <= fields
    assert "model" in fields and "model" not in OTHER_IMPLEMENTATIONS


# --- causal LMs ---------------------------------------------------------------------------------


def causal_lm_request(**settings) -> DeployRequest:
    """What the deploy component asks for with ``task="causal-lm"``."""
    values = dict(deploy_name="assistant", deploy_namespace="team-a") | settings
    return deploy_request(DeployConfig(**values), "s3://models/assistant/v2", "causal-lm")


def test_causal_lm_spec_names_the_hugging_face_runtime_and_its_arguments():
    request = causal_lm_request(serving_gpus=1, serving_max_model_len=512, serving_cpu="4", serving_memory="8Gi")
    doc = inference_service_doc(request)
    isvc = sdk_model(doc, "V1beta1InferenceService")  # every field one the kserve SDK's models have
    with client.ApiClient() as serializer:
        rebuilt = serializer.sanitize_for_serialization(isvc)
    rebuilt["spec"]["predictor"]["model"].pop("name")
    assert rebuilt == doc
    resources = {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"}
    assert doc["spec"]["predictor"]["model"] == {
        "modelFormat": {"name": "huggingface"},
        "runtime": "kserve-huggingfaceserver",
        "storageUri": "s3://models/assistant/v2",
        "args": ["--model_name=assistant", "--task=text_generation", "--max_model_len=512"],
        "resources": {"requests": resources, "limits": resources},
    }
    assert isvc.spec.predictor.model.args == doc["spec"]["predictor"]["model"]["args"]
    assert isvc.spec.predictor.model.resources.limits == resources


def test_causal_lm_defaults_leave_the_context_to_the_model_and_take_no_gpu():
    model = inference_service_doc(causal_lm_request())["spec"]["predictor"]["model"]
    assert model["args"] == ["--model_name=assistant", "--task=text_generation"]
    assert model["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    runtime = causal_lm_request(causal_lm_serving_runtime="hf-vllm-gpu")
    assert inference_service_doc(runtime)["spec"]["predictor"]["model"]["runtime"] == "hf-vllm-gpu"
    # classification is unchanged: kftune's runtime, no container arguments
    classification = deploy_request(DeployConfig(deploy_name="sentiment", deploy_namespace="team-a"), "s3://m/v1")
    model = inference_service_doc(classification)["spec"]["predictor"]["model"]
    assert (model["runtime"], model["modelFormat"], "args" in model) == ("kftune-onnx", {"name": "kftune-onnx"}, False)


def test_switching_tasks_replaces_the_runtime_arguments_and_the_gpu():
    causal = causal_lm_request(serving_gpus=1)
    existing = inference_service_doc(causal)
    back = deploy_request(DeployConfig(deploy_name="assistant", deploy_namespace="team-a"), "s3://models/other/v1")
    patch = update_patch(back, existing)
    sdk_model({k: v for k, v in patch["spec"]["predictor"].items() if v is not None}, "V1beta1PredictorSpec")
    model = merge_patch(existing, patch)["spec"]["predictor"]["model"]
    assert "args" not in model  # the Hugging Face runtime's arguments would break kftune serve
    assert model["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    assert (model["runtime"], model["modelFormat"]["name"]) == ("kftune-onnx", "kftune-onnx")

    model = merge_patch(merge_patch(existing, patch), update_patch(causal, existing))["spec"]["predictor"]["model"]
    assert model["args"] == ["--model_name=assistant", "--task=text_generation"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "Sentiment", "DNS-1035"),
        ("name", "1sentiment", "DNS-1035"),
        ("name", "sentiment-", "DNS-1035"),
        ("name", "s" * 48, "at most 47"),
        ("namespace", "Team_A", "namespace must be a DNS-1123 label"),
        ("model_uri", "/models/sentiment/v1", "a local path cannot be served"),
        ("model_uri", "ftp://models/sentiment", "model_uri must be an s3://"),
        ("model_uri", "s3:///sentiment/v1", "model_uri must name a bucket"),
        ("model_uri", "pvc:///sentiment", "model_uri must name a PersistentVolumeClaim"),
        ("model_uri", "pvc://Model_Claim/v1", "is not a PersistentVolumeClaim name"),
        ("model_uri", "s3://models/sentiment v1", "model_uri must be"),
        ("model_uri", "", "model_uri must be"),
        ("runtime", "kftune_onnx", "runtime must be the name of a ServingRuntime"),
        ("model_format", "", "model_format must be a model format name"),
        ("model_format", "onnx format", "model_format must be a model format name"),
        ("service_account", "Model Reader", "service_account must be a service account name"),
        ("min_replicas", -1, "min_replicas must be >= 0"),
        ("min_replicas", 2, "min_replicas must be between 0 (scale to zero) and max_replicas (1)"),
        ("min_replicas", 1.5, "min_replicas must be an integer"),
        ("min_replicas", True, "min_replicas must be an integer"),
        ("max_replicas", 0, "max_replicas must be >= 1"),
        ("canary_traffic_percent", 101, "canary_traffic_percent must be in [0, 100] or -1"),
        ("canary_traffic_percent", -2, "canary_traffic_percent must be in [0, 100] or -1"),
        ("cpu", "one", "cpu must be a Kubernetes quantity"),
        ("cpu", "0", "cpu must be > 0"),
        ("memory", "2 GB", "memory must be a Kubernetes quantity"),
        ("memory", "-2Gi", "memory must be > 0"),
        ("task", "summarization", "task must be one of classification, causal-lm, regression, multilabel"),
        ("gpus", -1, "gpus must be >= 0"),
        ("max_model_len", -1, "max_model_len must be >= 0"),
        ("gpus", 1, "apply to tasks 'causal-lm', 'dpo'"),
        ("max_model_len", 512, "apply to tasks 'causal-lm', 'dpo'"),
    ],
)
def test_bad_inputs_are_rejected_naming_the_parameter(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        make_request(**{field: value})
    assert field in str(error.value) and repr(value)[:20].strip("'") in str(error.value)


def test_request_defaults_and_ranges_are_the_deploy_settings():
    """The launcher takes DeployConfig: a request built from the default settings is the request's defaults."""
    settings = DeployConfig(deploy_name="sentiment", deploy_namespace="team-a")
    assert deploy_request(settings, "s3://models/sentiment/v1") == make_request()
    with pytest.raises(ConfigError, match="^serving_max_replicas must be >= 1, got 0$"):  # named as the user set it
        deploy_request(DeployConfig(deploy_name="sentiment", serving_max_replicas=0), "s3://models/sentiment/v1")
    with pytest.raises(ConfigError, match="^deploy_timeout_minutes must be > 0, got 0.0$"):
        deploy_request(DeployConfig(deploy_name="sentiment", deploy_timeout_minutes=0.0), "s3://models/sentiment/v1")


def test_bad_inputs_reach_no_api_server(kube):
    server, api_client = kube()
    request = make_request()
    request.max_replicas = 0  # changed after construction: checked again before anything is sent
    with pytest.raises(ConfigError, match="max_replicas"):
        deploy(api_client, request)
    with pytest.raises(ConfigError, match="timeout_minutes"):
        deploy(api_client, make_request(), timeout_seconds=0)
    assert server.requests == []


def test_empty_namespace_is_the_pods_own(tmp_path, monkeypatch):
    monkeypatch.setattr(kube_helpers, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
    assert make_request(namespace="").namespace == "default"  # not in a pod
    (tmp_path / "namespace").write_text("team-b\n")
    assert make_request(namespace="").namespace == "team-b"
    assert make_request(namespace="team-c").namespace == "team-c"


def test_is_current_needs_the_observed_generation_to_move_past_the_one_before_the_change():
    status = {"observedGeneration": 4}
    assert not is_current(status, _Target(generation=2, changed=True, observed_before=4))  # stale, though 4 >= 2
    assert is_current({"observedGeneration": 5}, _Target(generation=2, changed=True, observed_before=4))
    assert is_current({"observedGeneration": 3}, _Target(generation=4, changed=True, observed_before=2))  # 3 < 4
    assert not is_current({}, _Target(generation=1, changed=True, observed_before=None))  # not reconciled yet
    assert is_current({"observedGeneration": 1}, _Target(generation=1, changed=True, observed_before=None))
    assert is_current(status, _Target(generation=4, changed=False, observed_before=4))  # nothing changed


def test_is_ready_needs_the_latest_created_revision_ready():
    ready = {"conditions": [{"type": "Ready", "status": "True"}]}
    assert is_ready(ready)  # raw deployment mode: no revisions
    revisions = {"latestCreatedRevision": "s-predictor-00002", "latestReadyRevision": "s-predictor-00001"}
    assert not is_ready({**ready, "components": {"predictor": revisions}})
    revisions["latestReadyRevision"] = "s-predictor-00002"
    assert is_ready({**ready, "components": {"predictor": revisions}})
    unknown = {"conditions": [{"type": "Ready", "status": "Unknown"}]}
    assert not is_ready({**unknown, "components": {"predictor": revisions}})


# --- creating -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in (FIXTURES / "kserve").glob("*.json")))
def test_recorded_statuses_have_kserves_shape(name):
    """The recorded statuses are what KServe writes: every field one the kserve SDK's models (or Knative's types)
    have, of its type."""
    status = recorded(f"kserve/{name}")
    sdk_model(status, "V1beta1InferenceServiceStatus")
    assert {c["type"] for c in status["conditions"]} >= {"PredictorReady", "Ready"}


def test_create_sends_the_spec_waits_until_ready_and_returns_the_url(kube):
    server, api_client = kube(statuses=[{}, CREATING, R1_READY])  # not reconciled yet, revision 1 on its way, Ready
    lines: list[str] = []
    handle = deploy(api_client, make_request(), lines)

    assert [(r.method, r.path) for r in server.requests[:2]] == [("GET", f"{ISVC_PATH}/sentiment"), ("POST", ISVC_PATH)]
    assert server.calls("POST")[0].body == {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "sentiment", "namespace": "team-a",
                     "labels": {"app.kubernetes.io/managed-by": "kftune", "app.kubernetes.io/component": "deploy"}},
        "spec": {"predictor": {
            "serviceAccountName": "kftune-serving", "minReplicas": 1, "maxReplicas": 1,
            "model": {"modelFormat": {"name": "kftune-onnx"}, "runtime": "kftune-onnx",
                      "storageUri": "s3://models/sentiment/v1",
                      "resources": {"requests": RESOURCES, "limits": RESOURCES}},
        }},
    }  # fmt: skip
    assert polls_after(server, "POST") == 3  # no status yet, then Ready=Unknown: kept polling
    assert not server.calls("PATCH") and not server.calls("DELETE")
    assert handle["url"] == URL and handle["revision"] == R1
    assert handle["traffic"] == [{"revisionName": R1, "latestRevision": True, "percent": 100}]
    assert handle["created"] is True and handle["generation"] == 1
    waiting = 'Configuration "sentiment-predictor" is waiting for a Revision to become ready.'
    assert f"InferenceService team-a/sentiment: Ready=Unknown (RevisionMissing): {waiting}" in lines
    assert "InferenceService team-a/sentiment: model InProgress (active -, target Loading)" in lines
    assert "InferenceService team-a/sentiment: Ready=True" in lines
    assert lines[-1] == f"InferenceService team-a/sentiment is Ready at {URL} (traffic: 100% to {R1})"


def test_create_ignores_the_canary(kube):
    server, api_client = kube()
    lines: list[str] = []
    deploy(api_client, make_request(canary_traffic_percent=30), lines)
    assert "canaryTrafficPercent" not in server.calls("POST")[0].body["spec"]["predictor"]
    assert any("canary_traffic_percent=30 ignored" in line for line in lines)


def test_url_falls_back_to_the_address(kube):
    _, api_client = kube(address_only=True)
    assert deploy(api_client, make_request())["url"] == "http://sentiment-predictor.team-a.svc.cluster.local"


def test_logs_to_the_module_logger_by_default(kube, caplog):
    _, api_client = kube()
    with caplog.at_level("INFO", logger=deploy_module.__name__):
        deploy_inference_service(make_request(), api_client, **FAST)
    assert any("PredictorReady=True" in record.message for record in caplog.records)


# --- updating -----------------------------------------------------------------------------------


def existing_doc(**overrides) -> dict:
    doc = inference_service_doc(make_request(**overrides))
    doc["metadata"]["annotations"] = {"owner": "ml-team"}
    return doc


def test_update_patches_the_predictor_and_waits_for_the_new_revision(kube):
    # after the patch: the status from before it (not reconciled yet), revision 2 on its way, the canary split
    server, api_client = kube(statuses=[R1_READY, R2_PROGRESSING, R2_CANARY])
    server.add_inference_service(existing_doc(), status=R1_READY)
    lines: list[str] = []
    handle = deploy(api_client, make_request(model_uri="s3://models/sentiment/v2", canary_traffic_percent=20), lines)

    assert not server.calls("POST")
    (patch,) = server.calls("PATCH")
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body == {
        "metadata": {"labels": {"app.kubernetes.io/managed-by": "kftune", "app.kubernetes.io/component": "deploy"}},
        "spec": {"predictor": {
            "serviceAccountName": "kftune-serving", "minReplicas": 1, "maxReplicas": 1, "canaryTrafficPercent": 20,
            "model": {"modelFormat": {"name": "kftune-onnx"}, "runtime": "kftune-onnx",
                      "storageUri": "s3://models/sentiment/v2",
                      "resources": {"requests": RESOURCES, "limits": RESOURCES}},
        }},
    }  # fmt: skip
    # the first poll after the patch still showed revision 1 Ready (observedGeneration 1), the second revision 2 not
    # ready yet: the third is the answer
    assert polls_after(server, "PATCH") == 3
    assert handle["created"] is False and handle["generation"] == 2
    assert handle["url"] == URL and handle["revision"] == R2
    assert handle["traffic"] == R2_CANARY["components"]["predictor"]["traffic"]
    assert lines[-1] == f"InferenceService team-a/sentiment is Ready at {URL} (traffic: 20% to {R2}, 80% to {R1})"
    stored = server.inference_services[("team-a", "sentiment")].isvc
    assert stored["metadata"]["annotations"] == {"owner": "ml-team"}  # the rest of the object is kept
    assert any("updated (generation 1 -> 2)" in line and "20% of the traffic" in line for line in lines)
    waiting = "waiting for KServe to reconcile generation 2 (status.observedGeneration: 1)"
    assert f"InferenceService team-a/sentiment: {waiting}" in lines


def with_observed_generation(status: dict, generation: int) -> dict:
    status = copy.deepcopy(status)
    status["observedGeneration"] = generation
    return status


@pytest.mark.parametrize("offset", [3, -1])
def test_update_follows_the_mirrored_observed_generation(kube, offset):
    """KServe's observedGeneration is its Knative Service's: ahead of the InferenceService's
    (``>= generation`` would take the stale Ready) or behind it (``>=`` would never hold)."""
    before, after = 3 + offset, 4 + offset  # the Knative Service's, before and after the patch
    statuses = [with_observed_generation(status, generation)
                for status, generation in ((R1_READY, before), (R2_PROGRESSING, after), (R2_CANARY, after))]
    server, api_client = kube(statuses=statuses)
    server.add_inference_service(existing_doc(), generation=3, status=statuses[0])
    handle = deploy(api_client, make_request(model_uri="s3://models/sentiment/v2"), timeout_seconds=3)
    assert handle["generation"] == 4 and handle["revision"] == R2
    assert polls_after(server, "PATCH") == 3


def test_redeploying_the_same_spec_changes_nothing(kube):
    server, api_client = kube(statuses=[CREATING, R1_READY])
    first = deploy(api_client, make_request())
    lines: list[str] = []
    again = deploy(api_client, make_request(), lines)
    assert again["generation"] == first["generation"] == 1
    assert again["revision"] == first["revision"] == R1
    assert polls_after(server, "PATCH") == 1  # already Ready with this spec
    assert "InferenceService team-a/sentiment already has this spec (generation 1 unchanged)" in lines


def test_a_canary_promoted_then_pinned_back(kube):
    server, api_client = kube(statuses=[R2_CANARY, PROMOTED])
    server.add_inference_service(existing_doc(model_uri="s3://models/sentiment/v2", canary_traffic_percent=20),
                                 generation=2, status=R2_CANARY)
    server.inference_services[("team-a", "sentiment")].isvc["spec"]["predictor"]["canaryTrafficPercent"] = 20
    lines: list[str] = []
    promoted = deploy(api_client, make_request(model_uri="s3://models/sentiment/v2"), lines)
    assert server.calls("PATCH")[-1].body["spec"]["predictor"]["canaryTrafficPercent"] is None  # removes the canary
    assert "canaryTrafficPercent" not in server.inference_services[("team-a", "sentiment")].isvc["spec"]["predictor"]
    assert promoted["generation"] == 3 and promoted["revision"] == R2
    assert promoted["traffic"] == [{"revisionName": R2, "latestRevision": True, "percent": 100}]
    assert lines[-1] == f"InferenceService team-a/sentiment is Ready at {URL} (traffic: 100% to {R2})"

    stored = server.inference_services[("team-a", "sentiment")].isvc
    server.kserve = FakeKServeScenario(statuses=[PROMOTED, PINNED])
    server.add_inference_service({key: stored[key] for key in ("apiVersion", "kind", "metadata", "spec")},
                                 generation=3, status=PROMOTED)  # rolled out, as the promotion left it
    lines.clear()
    pinned = deploy(api_client, make_request(model_uri="s3://models/sentiment/v2", canary_traffic_percent=0), lines)
    assert server.calls("PATCH")[-1].body["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert pinned["generation"] == 4 and pinned["revision"] == R2  # still the latest ready revision ...
    assert pinned["traffic"] == PINNED["components"]["predictor"]["traffic"]  # ... with none of the traffic
    assert lines[-1] == f"InferenceService team-a/sentiment is Ready at {URL} (traffic: 100% to {R1})"


def test_created_by_someone_else_meanwhile_is_updated(kube, monkeypatch):
    server, api_client = kube(statuses=[R1_READY, R2_PROGRESSING, R2_CANARY])
    server.add_inference_service(existing_doc(), status=R1_READY)
    real_get = ResourceApi.get
    calls = []

    def get_that_missed_it_once(self, **options):  # as if the other create came right after our GET
        calls.append(options)
        return None if len(calls) == 1 else real_get(self, **options)

    monkeypatch.setattr(ResourceApi, "get", get_that_missed_it_once)
    lines: list[str] = []
    handle = deploy(api_client, make_request(model_uri="s3://models/sentiment/v2", canary_traffic_percent=20), lines)
    assert [r.method for r in server.requests[:3]] == ["POST", "GET", "PATCH"]  # 409, then the update
    assert server.calls("PATCH")[0].body["spec"]["predictor"]["model"]["storageUri"] == "s3://models/sentiment/v2"
    assert handle["created"] is False and handle["revision"] == R2 and polls_after(server, "PATCH") == 3
    assert any("created meanwhile by someone else" in line for line in lines)


def test_update_replaces_another_way_of_naming_the_model(kube):
    server, api_client = kube()
    doc = existing_doc()
    doc["spec"]["predictor"] = {"sklearn": {"storageUri": "gs://old/model"}}
    server.add_inference_service(doc)
    deploy(api_client, make_request())  # the fake webhook denies a predictor with both
    predictor = server.inference_services[("team-a", "sentiment")].isvc["spec"]["predictor"]
    assert "sklearn" not in predictor and predictor["model"]["runtime"] == "kftune-onnx"


def test_update_of_an_inference_service_kftune_did_not_create_warns(kube):
    server, api_client = kube()
    doc = existing_doc()
    doc["metadata"].pop("labels")
    server.add_inference_service(doc)
    lines: list[str] = []
    deploy(api_client, make_request(), lines)
    assert any(line.startswith("warning:") and "not created by kftune" in line for line in lines)
    assert server.inference_services[("team-a", "sentiment")].isvc["metadata"]["labels"]["app.kubernetes.io/managed-by"]


# --- failures -----------------------------------------------------------------------------------

REVISION_FAILED = (
    "RevisionFailed",
    'Revision "sentiment-predictor-00001" failed with message: Back-off pulling image "ghcr.io/kftune/serve:0.1.0".',
)


def test_a_failed_rollout_is_raised_with_its_reason_and_left_in_place(kube):
    server, api_client = kube(failure=REVISION_FAILED, fail_on_poll=2)
    with pytest.raises(KftuneError) as error:
        deploy(api_client, make_request())
    message = str(error.value)
    assert "InferenceService team-a/sentiment failed: PredictorReady=False (RevisionFailed)" in message
    assert "Back-off pulling image" in message and "kubectl describe inferenceservice -n team-a sentiment" in message
    assert polls_after(server, "POST") == 2
    assert not server.calls("DELETE") and ("team-a", "sentiment") in server.inference_services


def test_a_failed_update_is_left_as_kserve_has_it(kube):
    """Knative keeps routing to the last ready revision: kftune neither deletes nor rolls anything back."""
    server, api_client = kube(failure=REVISION_FAILED)
    server.add_inference_service(existing_doc())
    with pytest.raises(KftuneError) as error:
        deploy(api_client, make_request(model_uri="s3://models/sentiment/v2"))
    assert str(error.value) == (
        f"InferenceService team-a/sentiment failed: PredictorReady=False (RevisionFailed): {REVISION_FAILED[1]}; "
        "left in place (kubectl describe inferenceservice -n team-a sentiment)"
    )
    assert [r.method for r in server.requests if r.method != "GET"] == ["PATCH"]  # one patch, no delete or undo


def test_a_model_that_fails_to_load_is_raised(kube):
    model_failure = ("BlockedByFailedLoad", "ModelLoadFailed", "NoSuchBucket: the bucket models does not exist")
    _, api_client = kube(model_failure=model_failure)
    with pytest.raises(KftuneError, match=r"model BlockedByFailedLoad: ModelLoadFailed: NoSuchBucket.*\(exit code 1\)"):
        deploy(api_client, make_request())


def test_a_missing_serving_runtime_is_raised_with_a_hint(kube):
    model_failure = ("InvalidSpec", "RuntimeNotRecognized", "Waiting for runtime to become available")
    server, api_client = kube(model_failure=model_failure, fail_on_poll=1)
    with pytest.raises(KftuneError) as error:
        deploy(api_client, make_request(runtime="kftune-onnx"))
    message = str(error.value)
    assert "model InvalidSpec: RuntimeNotRecognized: Waiting for runtime" in message
    assert "ServingRuntime 'kftune-onnx'" in message and "kubectl get servingruntimes -n team-a" in message
    assert "observedGeneration" not in server.inference_services[("team-a", "sentiment")].isvc["status"]


def test_a_passing_failure_is_ridden_out_within_the_grace_period(kube):
    passing = ("ReconcileFailed", "Operation cannot be fulfilled: the object has been modified")
    scenario = dict(failure=passing, fail_on_poll=2, failure_clears_on_poll=4, ready_on_poll=5)
    _, api_client = kube(**scenario)
    handle = deploy(api_client, make_request(), failure_grace_seconds=5)
    assert handle["url"] == "http://sentiment.team-a.example.com"
    _, api_client = kube(**scenario)
    with pytest.raises(KftuneError, match="ReconcileFailed"):  # the same, with no grace
        deploy(api_client, make_request(), failure_grace_seconds=0)


def test_a_stale_failure_of_the_previous_spec_is_not_raised(kube):
    server, api_client = kube(failure=REVISION_FAILED)
    with pytest.raises(KftuneError, match="RevisionFailed"):
        deploy(api_client, make_request(model_uri="s3://models/sentiment/broken"))
    server.kserve = FakeKServeScenario(stale_polls=2, ready_on_poll=4)  # the fixed model rolls out
    handle = deploy(api_client, make_request(model_uri="s3://models/sentiment/v2"), failure_grace_seconds=0)
    # the two stale polls still showed the failure: neither was raised, the Ready of poll 4 was the answer
    assert polls_after(server, "PATCH") == 4 and handle["created"] is False and handle["generation"] == 2


def test_timeout_leaves_it_and_names_the_last_state(kube):
    server, api_client = kube(ready_on_poll=None)
    with pytest.raises(KftuneError) as error:
        deploy(api_client, make_request(), timeout_seconds=0.3)
    message = str(error.value)
    assert "InferenceService team-a/sentiment not Ready after" in message
    assert "Ready=Unknown (RevisionMissing)" in message and "left in place" in message
    assert polls_after(server, "POST") > 3 and not server.calls("DELETE")


def test_timeout_names_a_generation_kserve_never_reconciled(kube):
    server, api_client = kube(stale_polls=10**6)
    server.add_inference_service(existing_doc())
    with pytest.raises(KftuneError, match="KServe has not reconciled generation 2 yet: status.observedGeneration is 1"):
        deploy(api_client, make_request(model_uri="s3://models/sentiment/v2"), timeout_seconds=0.3)


# --- the API ------------------------------------------------------------------------------------


def test_transient_api_errors_are_retried_with_backoff(kube):
    server, api_client = kube(failing_requests=3)
    lines: list[str] = []
    handle = deploy(api_client, make_request(), lines)
    assert handle["url"] == "http://sentiment.team-a.example.com"
    retries = [line for line in lines if "retrying" in line]
    assert len(retries) == 3 and all("HTTP 500" in line for line in retries)
    assert [line.split("retrying in ")[1].split(" s")[0] for line in retries] == ["0.01", "0.02", "0.04"]
    assert [r.method for r in server.requests[:5]] == ["GET", "GET", "GET", "GET", "POST"]


def test_an_api_server_that_keeps_failing_is_given_up_on(kube):
    server, api_client = kube(failing_requests=100)
    with pytest.raises(
        KftuneError, match=r"cannot get InferenceService team-a/sentiment: .*kept failing \(6 attempts\)"
    ):
        deploy(api_client, make_request())
    assert len(server.requests) == 6


@pytest.mark.parametrize(
    ("method", "verb", "requests"), [("GET", "get", 1), ("POST", "create", 2), ("PATCH", "patch", 2)]
)
def test_forbidden_fails_at_once_with_an_rbac_hint(kube, method, verb, requests):
    server, api_client = kube(forbidden=frozenset({method}))
    if method == "PATCH":
        server.add_inference_service(existing_doc())
    with pytest.raises(KftuneError) as error:
        deploy(api_client, make_request(model_uri="s3://models/sentiment/v2"))
    message = str(error.value)
    assert message.startswith(f"cannot {verb} InferenceService team-a/sentiment: not allowed (RBAC)")
    assert "get, create and patch on inferenceservices.serving.kserve.io" in message
    assert "manifests/base/rbac.yaml" in message and f'cannot {verb} resource "inferenceservices"' in message
    assert len(server.requests) == requests  # no retries


def test_a_webhook_denial_is_not_taken_for_rbac(kube):
    server, api_client = kube(webhook_denial="storageUri s3://models/sentiment/v1 is not supported")
    with pytest.raises(KftuneError) as error:
        deploy(api_client, make_request())
    assert "rejected by KServe's validating webhook" in str(error.value) and "RBAC" not in str(error.value)
    assert "is not supported" in str(error.value)
    assert not server.inference_services


def test_kserve_not_installed(kube):
    server, api_client = kube(crd_missing=True)
    with pytest.raises(KftuneError, match=r"KServe is not installed \(no inferenceservices.serving.kserve.io CRD"):
        deploy(api_client, make_request())
    assert len(server.requests) == 1


def test_manifests_rbac_allows_every_call_the_deploy_makes(kube):
    """manifests/base/rbac.yaml grants what deploy_inference_service uses (create, then update)."""
    import yaml

    rbac = Path(__file__).resolve().parents[1] / "manifests" / "base" / "rbac.yaml"
    allowed = {
        (group, resource, verb)
        for doc in yaml.safe_load_all(rbac.read_text())
        if doc and doc["kind"] in ("Role", "ClusterRole")
        for rule in doc["rules"]
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule["verbs"]
    }
    server, api_client = kube()
    deploy(api_client, make_request())
    deploy(api_client, make_request(model_uri="s3://models/sentiment/v2"))
    verbs = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}
    used = set()
    for request in server.requests:
        parts = request.path.strip("/").split("/")  # /apis/<group>/<version>/namespaces/<ns>/<resource>[/<name>]
        group, rest = parts[1], parts[5:]
        used.add((group, rest[0], verbs.get(request.method) or ("get" if len(rest) > 1 else "list")))
    assert used == {("serving.kserve.io", "inferenceservices", verb) for verb in ("get", "create", "patch")}
    missing = used - allowed
    assert not missing, f"manifests/base/rbac.yaml does not grant {sorted(missing)}"


# --- the component ------------------------------------------------------------------------------




def test_component_interface():
    from kftune.cluster.images import ImageScheme
    from kftune.components.deploy import component

    op = component.component(ImageScheme(registry="registry.example/ml", tag="1.2.3"))
    spec = op.component_spec
    assert spec.implementation.container.image == "registry.example/ml/kftune-deploy:1.2.3"
    inputs = {name: (i.type, i.default) for name, i in spec.inputs.items()}
    assert inputs == {
        "model_uri": ("String", None),
        "deploy_name": ("String", ""),
        "deploy_namespace": ("String", ""),
        "serving_runtime": ("String", "kftune-onnx"),
        "serving_model_format": ("String", "kftune-onnx"),
        "causal_lm_serving_runtime": ("String", "kserve-huggingfaceserver"),
        "serving_service_account": ("String", "kftune-serving"),
        "serving_min_replicas": ("Integer", 1),
        "serving_max_replicas": ("Integer", 1),
        "canary_traffic_percent": ("Integer", -1),
        "serving_cpu": ("String", "1"),
        "serving_memory": ("String", "2Gi"),
        "serving_gpus": ("Integer", 0),
        "serving_max_model_len": ("Integer", 0),
        "deploy_timeout_minutes": ("Float", 15.0),
        "task": ("String", "auto"),
        "exported_model": ("system.Model@0.0.1", None),
    }
    assert {name: o.type for name, o in spec.outputs.items()} == {"Output": "String"}
    assert all(i.description for i in spec.inputs.values()), "every parameter needs an Args: line (the UI shows it)"


def test_component_function_deploys_through_the_kubeconfig(kube, tmp_path, monkeypatch):
    """The component's own body, outside KFP: kube config from KUBECONFIG, namespace from the pod."""
    from kftune.components.deploy.component import deploy as deploy_component

    server, _ = kube(stale_polls=0, ready_on_poll=1)  # Ready on the first poll: no 5 s poll interval
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))  # $KUBECONFIG, read at import
    (tmp_path / "namespace").write_text("team-a")
    monkeypatch.setattr(kube_helpers, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
    url = deploy_component(model_uri="s3://models/sentiment/v1", deploy_name="sentiment", serving_memory="1Gi",
                           deploy_timeout_minutes=1, task="classification")
    assert url == "http://sentiment.team-a.example.com"
    model = server.inference_services[("team-a", "sentiment")].isvc["spec"]["predictor"]["model"]
    assert model["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}

    # task="causal-lm", as the pipelines pass it: the Hugging Face runtime, checked by the SDK's models
    deploy_component(model_uri="s3://models/assistant/v1", deploy_name="assistant", task="causal-lm",
                     serving_max_model_len=256, deploy_timeout_minutes=1)
    (post,) = [r for r in server.calls("POST") if r.body["metadata"]["name"] == "assistant"]
    sent = sdk_model(post.body, "V1beta1InferenceService").spec.predictor.model
    assert (sent.runtime, sent.model_format.name) == ("kserve-huggingfaceserver", "huggingface")
    assert sent.args == ["--model_name=assistant", "--task=text_generation", "--max_model_len=256"]
    with pytest.raises(ConfigError, match="task must be one of"):
        deploy_component(model_uri="s3://models/a/v1", deploy_name="assistant", task="summarization")
    with pytest.raises(ConfigError, match="exported_model"):
        deploy_component(model_uri="s3://models/a/v1", deploy_name="assistant")
    # task auto (the pipelines' default): the export says which; a regression model goes to kftune's runtime
    export = tmp_path / "export"
    export.mkdir()
    (export / "export_report.json").write_text('{"task": "regression"}')
    deploy_component(model_uri="s3://models/scores/v1", deploy_name="scores", deploy_timeout_minutes=1,
                     exported_model=type("Artifact", (), {"path": str(export)})())
    (post,) = [r for r in server.calls("POST") if r.body["metadata"]["name"] == "scores"]
    assert post.body["spec"]["predictor"]["model"]["runtime"] == "kftune-onnx"


@pytest.mark.slow
def test_component_under_kfp_local(kube, tmp_path, monkeypatch):
    """The component as KFP runs it (kfp.local, a subprocess), against the fake API server."""
    from kfp import dsl

    from kftune.components.deploy import component
    from kftune.pipelines.local import run_pipeline_locally

    server, _ = kube(stale_polls=0, ready_on_poll=1)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", server)))
    deploy_op = component.component()

    @dsl.pipeline(name="deploy-only")
    def deploy_only(model_uri: str) -> str:
        # the task named: with task auto the component reads it from the exported_model artifact, not passed here
        return deploy_op(model_uri=model_uri, deploy_name="sentiment", canary_traffic_percent=10,
                         task="classification").output

    task = run_pipeline_locally(deploy_only, {"model_uri": "s3://models/sentiment/v1"}, tmp_path / "runs")
    assert task.output == "http://sentiment.default.example.com"  # no pod: the default namespace
    assert ("default", "sentiment") in server.inference_services
