"""manifests/: every kustomization builds; core kinds pass strict schema validation; custom resources
match the KServe SDK's models; Secret templates hold placeholders only; RBAC is exactly what the code uses.

No Kubernetes API server can run here, so "valid" means: ``kubectl kustomize`` builds it,
``kubernetes-validate --strict`` accepts every core object against the Kubernetes version of the kind
node image, and every custom resource converts field by field into the SDK's model classes (an unknown
or mistyped field fails). The launchers' API calls come from running them against the fake API server
of tests/fake_kube_api.py.

kubectl (for the builds) and kubernetes-validate (for the two strict-validation tests only) come with
the dev extra; a test whose tool is missing skips, saying which, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import base64
import functools
import inspect
import re
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import kserve
import pytest
import yaml
from kubernetes import client as k8s

from kftune.cluster.images import ImageScheme
from kftune.cluster.kube import SHARED_VOLUME
from kftune.cluster.resources import TrainResources
from kftune.components.train.trainjob import run_trainjob
from kftune.components.tune.katib import run_experiment
from kftune.pipelines.cluster import ClusterOptions, StorageSecrets
from kftune.pipelines.secrets import use_gcs_secret, use_s3_secret
from tests.fake_kube_api import FakeKatibScenario, FakeKubeApiServer, Scenario
from tests.test_katib import make_request as make_katib_request
from tests.test_trainjob import make_request as make_trainjob_request
from tests.tools import need, versions

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
BIN = ROOT / ".venv" / "bin"
KUBECTL = str(BIN / "kubectl") if (BIN / "kubectl").exists() else shutil.which("kubectl")
KUBERNETES_VALIDATE = (str(BIN / "kubernetes-validate") if (BIN / "kubernetes-validate").exists()
                       else shutil.which("kubernetes-validate"))

# Every kustomization under manifests/ (a new one must be added here, and so gets tested).
BUILDS = ("base", "overlays/kind", "overlays/production", "secrets")
APPLIED = ("base", "overlays/kind", "overlays/production")  # what `kubectl apply -k` is meant for
# Custom resources and the SDK model each must match; anything else must be a core kind.
CUSTOM_MODELS = {("serving.kserve.io/v1alpha1", "ServingRuntime"): kserve.V1alpha1ServingRuntime}
SERVE_COMMAND = ["kftune", "serve", "/mnt/models", "--model-name", "{{.Name}}", "--http-port", "8080"]
DEPLOY_VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
PLACEHOLDER = re.compile(r"^REPLACE_ME_[A-Z0-9_]+$")







def kubernetes_version() -> str:
    """The Kubernetes version of the pinned kind node image (kindest/node:v1.35.0@sha256:... -> 1.35.0)."""
    match = re.match(r"kindest/node:v(\d+\.\d+\.\d+)@sha256:[0-9a-f]{64}$", versions()["KIND_NODE_IMAGE"])
    assert match, versions()["KIND_NODE_IMAGE"]
    return match.group(1)


@functools.cache
def build(name: str) -> tuple[dict, ...]:
    """The objects ``kubectl kustomize manifests/<name>`` renders."""
    result = subprocess.run([need(KUBECTL, "kubectl"), "kustomize", str(MANIFESTS / name)], capture_output=True,
                            text=True)
    assert result.returncode == 0, f"kubectl kustomize manifests/{name} failed: {result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(name: str, kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in build(name) if doc["kind"] == kind}


def is_custom(doc: dict) -> bool:
    return (doc["apiVersion"], doc["kind"]) in CUSTOM_MODELS


def pipeline_defaults() -> dict[str, object]:
    """Run parameters of the compiled finetune pipeline and their defaults."""
    pipeline, _platform = yaml.safe_load_all((ROOT / "pipelines" / "compiled" / "finetune.yaml").read_text())
    return {name: spec["defaultValue"] for name, spec in pipeline["root"]["inputDefinitions"]["parameters"].items()}


def storage_access_defaults() -> dict[str, object]:
    """The Secret names, keys and S3 endpoint the pipeline's storage steps get by default."""
    return asdict(StorageSecrets()) | asdict(ClusterOptions())


# --- building and validating ---------------------------------------------------------------------


def test_every_kustomization_is_built_by_these_tests():
    found = {str(p.parent.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("kustomization.yaml")}
    assert found == set(BUILDS)
    assert {"kind", "production"} <= {p.name for p in (MANIFESTS / "overlays").iterdir() if p.is_dir()}


@pytest.mark.parametrize("name", BUILDS)
def test_kustomize_builds(name):
    docs = build(name)
    assert docs
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kftune", doc["metadata"]


@pytest.mark.parametrize("name", BUILDS)
def test_core_objects_pass_strict_schema_validation(name, tmp_path):
    validator = need(KUBERNETES_VALIDATE, "kubernetes-validate")
    core = [doc for doc in build(name) if not is_custom(doc)]
    assert core
    # anything else would be a custom resource that neither this nor the SDK model check covers
    assert {doc["apiVersion"] for doc in core} <= {"v1", "rbac.authorization.k8s.io/v1"}
    manifest = tmp_path / "core.yaml"
    manifest.write_text(yaml.safe_dump_all(core))
    result = subprocess.run([validator, "--strict", "-k", kubernetes_version(), str(manifest)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(core), result.stdout


def test_strict_validation_catches_an_unknown_field(tmp_path):
    """The validator really checks (--strict rejects what the API server would prune)."""
    validator = need(KUBERNETES_VALIDATE, "kubernetes-validate")
    pvc = dict(objects("base", "PersistentVolumeClaim")["kftune-shared"])
    pvc["spec"] = {**pvc["spec"], "accessMode": ["ReadWriteOnce"]}
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump(pvc))
    result = subprocess.run([validator, "--strict", "-k", kubernetes_version(), str(manifest)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "accessMode" in result.stdout + result.stderr


# --- custom resources against the SDK models ----------------------------------------------------


def _model_class(type_name: str):
    cls = getattr(kserve, type_name, None) or getattr(k8s, type_name, None)
    assert cls is not None, f"no SDK model {type_name}"
    return cls


def to_model(type_name: str, value, path: str = "$"):
    """``value`` (parsed YAML) as the SDK type ``type_name`` (an ``openapi_types`` string), strictly:
    an unknown field, a value of the wrong type or a missing required field raises AssertionError/ValueError.

    (kubernetes' ApiClient.deserialize would silently drop unknown fields; the models' constructors
    check required fields and enums, this walk checks names and types.)
    """
    if type_name == "object":
        return value
    if type_name.startswith("list["):
        assert isinstance(value, list), f"{path}: expected a list, got {value!r}"
        return [to_model(type_name[5:-1], item, f"{path}[{i}]") for i, item in enumerate(value)]
    if type_name.startswith("dict("):
        item_type = type_name[5:-1].split(", ", 1)[1]
        assert isinstance(value, dict), f"{path}: expected a mapping, got {value!r}"
        return {k: to_model(item_type, v, f"{path}.{k}") for k, v in value.items()}
    scalars = {"str": str, "bool": bool, "int": int, "float": (int, float), "datetime": str, "date": str}
    if type_name in scalars:
        ok = isinstance(value, scalars[type_name]) and not (type_name in ("int", "float") and isinstance(value, bool))
        assert ok, f"{path}: expected {type_name}, got {value!r}"
        return value
    cls = _model_class(type_name)
    assert isinstance(value, dict), f"{path}: expected a {type_name} mapping, got {value!r}"
    by_json_name = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    unknown = sorted(set(value) - set(by_json_name))
    assert not unknown, f"{path}: {type_name} has no field {', '.join(unknown)}"
    kwargs = {by_json_name[k]: to_model(cls.openapi_types[by_json_name[k]], v, f"{path}.{k}") for k, v in value.items()}
    return cls(**kwargs)


def to_custom_model(doc: dict):
    cls = CUSTOM_MODELS[(doc["apiVersion"], doc["kind"])]
    return to_model(cls.__name__, doc)


@pytest.mark.parametrize("name", APPLIED)
def test_custom_resources_match_the_sdk_models(name):
    custom = [doc for doc in build(name) if is_custom(doc)]
    assert [doc["kind"] for doc in custom] == ["ServingRuntime"]
    for doc in custom:
        model = to_custom_model(doc)
        assert model.to_dict()["spec"]["containers"][0]["name"] == "kserve-container"


@pytest.mark.parametrize(("error", "breaker"), [
    ("has no field autoselect", lambda spec: spec["supportedModelFormats"][0].update(autoselect=True)),
    ("has no field imagePullPolicyy", lambda spec: spec["containers"][0].update(imagePullPolicyy="Always")),
    ("has no field runtime", lambda spec: spec.update(runtime="onnx")),
    ("autoSelect: expected bool", lambda spec: spec["supportedModelFormats"][0].update(autoSelect="yes")),
    ("version: expected str", lambda spec: spec["supportedModelFormats"][0].update(version=1)),
    ("containerPort: expected int", lambda spec: spec["containers"][0]["ports"][0].update(containerPort="8080")),
    ("`name`, must not be `None`", lambda spec: spec["containers"][0].pop("name")),
])
def test_the_sdk_model_check_rejects_invalid_fields(error, breaker):
    doc = yaml.safe_load(yaml.safe_dump(objects("base", "ServingRuntime")["kftune-onnx"]))  # a deep copy
    to_custom_model(doc)  # valid as it is
    breaker(doc["spec"])
    with pytest.raises((AssertionError, ValueError), match=re.escape(error)):
        to_custom_model(doc)


@pytest.mark.parametrize(("name", "image"), [
    ("base", ImageScheme().image("serve")),
    ("overlays/production", ImageScheme().image("serve")),
    ("overlays/kind", ImageScheme(registry="localhost:5001", tag="dev").image("serve")),
])
def test_serving_runtime_kftune_onnx(name, image):
    runtime = objects(name, "ServingRuntime")["kftune-onnx"]["spec"]
    assert runtime["supportedModelFormats"] == [{"name": "kftune-onnx", "version": "1", "autoSelect": True}]
    [container] = runtime["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == image
    assert container["command"] + container["args"] == SERVE_COMMAND
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["allowPrivilegeEscalation"] is False
    assert isinstance(security["runAsUser"], int) and security["runAsUser"] > 0
    assert security["capabilities"]["drop"] == ["ALL"]
    for bound in ("requests", "limits"):
        assert set(container["resources"][bound]) == {"cpu", "memory"}


def test_the_pipeline_defaults_name_the_runtime_and_service_account_the_manifests_create():
    defaults = pipeline_defaults()
    for name in APPLIED:
        assert defaults["serving_runtime"] in objects(name, "ServingRuntime")
        assert defaults["serving_service_account"] in objects(name, "ServiceAccount")


# --- secrets --------------------------------------------------------------------------------------


def secret_values(secret: dict) -> dict[str, str]:
    values = dict(secret.get("stringData") or {})
    values.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
    return values


def test_secret_templates_hold_placeholders_only():
    secrets = objects("secrets", "Secret")
    assert set(secrets) == {"mlpipeline-minio-artifact", "kftune-serving-minio", "kftune-gcs"}
    for name, secret in secrets.items():
        values = secret_values(secret)
        assert values, name
        for key, value in values.items():
            assert PLACEHOLDER.match(value), f"Secret {name} key {key}: {value!r} is not a REPLACE_ME_ placeholder"


def test_no_credential_anywhere_under_manifests():
    credential_like = re.compile(
        r"AKIA[0-9A-Z]{16}"                      # an AWS access key id
        r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"   # a PEM key (a GCS key file has one)
        r"|\"private_key\"\s*:"                  # a service-account JSON
        r"|\bminio123\b"                         # KFP's well-known default MinIO secret key
        r"|(?:secret|password|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{20,}"
    )
    files = [p for p in MANIFESTS.rglob("*") if p.is_file()]
    assert any(p.name == "minio-serving.yaml" for p in files)
    for path in files:
        hit = credential_like.search(path.read_text())
        assert not hit, f"{path.relative_to(ROOT)}: looks like a credential: {hit.group(0)!r}"


@pytest.mark.parametrize("name", APPLIED)
def test_what_gets_applied_holds_no_secret(name):
    """Applying base or an overlay never overwrites credentials with placeholders."""
    assert not objects(name, "Secret")


def test_secret_templates_have_the_names_and_keys_the_code_reads():
    secrets = objects("secrets", "Secret")
    s3 = inspect.signature(use_s3_secret).parameters
    storage = storage_access_defaults()
    assert storage["s3_secret"] == s3["secret_name"].default == "mlpipeline-minio-artifact"
    assert set(secret_values(secrets["mlpipeline-minio-artifact"])) == {
        storage["s3_access_key_field"], storage["s3_secret_key_field"]
    } == {s3["access_key_field"].default, s3["secret_key_field"].default}
    gcs_key_file = inspect.signature(use_gcs_secret).parameters["key_file"].default
    assert set(secret_values(secrets["kftune-gcs"])) == {gcs_key_file}
    # KServe's storage initializer: the keys of inferenceservice-config credentials.s3 (KServe's defaults)
    assert set(secret_values(secrets["kftune-serving-minio"])) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_serving_account_carries_the_minio_secret_with_kserve_s3_annotations():
    secret = objects("secrets", "Secret")["kftune-serving-minio"]
    annotations = secret["metadata"]["annotations"]
    assert {"serving.kserve.io/s3-endpoint", "serving.kserve.io/s3-usehttps",
            "serving.kserve.io/s3-region"} <= set(annotations)
    assert all(key.startswith("serving.kserve.io/s3-") for key in annotations)
    # the endpoint the pipeline's steps use by default (kftune compile --s3-endpoint), without scheme
    endpoint = storage_access_defaults()["s3_endpoint"]
    assert endpoint.startswith("http://") and annotations["serving.kserve.io/s3-usehttps"] == "0"
    assert annotations["serving.kserve.io/s3-endpoint"] == endpoint.removeprefix("http://")
    for name in APPLIED:
        account = objects(name, "ServiceAccount")["kftune-serving"]
        assert account["secrets"] == [{"name": "kftune-serving-minio"}]


def test_serving_secrets_point_at_the_pipeline_default_endpoint():
    """The pipeline steps and KServe's storage initializer use the same store: KFP's own (SeaweedFS since 2.15)."""
    endpoint = storage_access_defaults()["s3_endpoint"]
    assert endpoint == "http://seaweedfs.kubeflow:9000"
    host_port = endpoint.removeprefix("http://")
    secret = objects("secrets", "Secret")["kftune-serving-minio"]
    assert secret["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == host_port
    assert secret["metadata"]["annotations"]["serving.kserve.io/s3-usehttps"] == "0"
    template = (ROOT / "kind-cluster" / "serving-minio-secret.tmpl").read_text()
    assert f"serving.kserve.io/s3-endpoint: {host_port}\n" in template


# --- RBAC ------------------------------------------------------------------------------------------


def grants(role: dict) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def api_calls(server: FakeKubeApiServer) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) of every request the fake API server saw."""
    verbs = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}
    calls = set()
    for request in server.requests:
        parts = request.path.split("?")[0].strip("/").split("/")
        if parts[0] == "apis":  # /apis/<group>/<version>/namespaces/<ns>/<resource>[/<name>[/<sub>]]
            group, rest = parts[1], parts[5:]
        else:  # /api/v1/namespaces/<ns>/<resource>[/<name>[/<sub>]]
            group, rest = "", parts[4:]
        resource = "/".join([rest[0], *rest[2:]])
        calls.add((group, resource, verbs.get(request.method) or ("get" if len(rest) > 1 else "list")))
    return calls


def test_launcher_role_grants_exactly_what_the_launchers_use():
    """Run the TrainJob and the Katib launchers against the fake API server: their calls are the Role."""
    with FakeKubeApiServer(Scenario(finish_on_poll=2), katib=FakeKatibScenario()) as server:
        api_client = server.api_client()
        try:
            run_trainjob(make_trainjob_request(), api_client, log=lambda line: None, poll_seconds=0.01,
                         timeout_seconds=10)
            run_experiment(make_katib_request(), api_client, log=lambda line: None, poll_seconds=0.01,
                           timeout_seconds=10)
        finally:
            api_client.close()
    used = api_calls(server)
    assert ("", "pods/log", "get") in used and ("kubeflow.org", "trials", "list") in used  # both ran
    for name in APPLIED:
        assert grants(objects(name, "Role")["kftune-launcher"]) == used, name


def test_deploy_role_grants_the_deploy_verbs_on_inferenceservices_only():
    for name in APPLIED:
        assert grants(objects(name, "Role")["kftune-deploy"]) == {
            ("serving.kserve.io", "inferenceservices", verb) for verb in DEPLOY_VERBS
        }


def test_base_rbac_file_keeps_the_launcher_role_first():
    """tests/test_trainjob.py and tests/test_katib.py read the first Role of manifests/base/rbac.yaml."""
    docs = list(yaml.safe_load_all((MANIFESTS / "base" / "rbac.yaml").read_text()))
    assert next(doc for doc in docs if doc["kind"] == "Role")["metadata"]["name"] == "kftune-launcher"


@pytest.mark.parametrize("name", APPLIED)
def test_rbac_is_namespaced_and_has_no_wildcards(name):
    kinds = {doc["kind"] for doc in build(name)}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    roles = objects(name, "Role")
    assert set(roles) == {"kftune-launcher", "kftune-deploy"}
    for role in roles.values():
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule


@pytest.mark.parametrize(("name", "runner"), [
    ("base", "default-editor"), ("overlays/production", "default-editor"), ("overlays/kind", "pipeline-runner"),
])
def test_each_role_is_bound_to_the_pipeline_runner_in_its_own_namespace(name, runner):
    roles = objects(name, "Role")
    bindings = objects(name, "RoleBinding")
    assert {b["roleRef"]["name"] for b in bindings.values()} == set(roles)
    for binding in bindings.values():
        namespace = binding["metadata"]["namespace"]
        assert binding["roleRef"]["kind"] == "Role"
        subjects = binding["subjects"]
        assert all(s["kind"] == "ServiceAccount" and s["namespace"] == namespace for s in subjects), subjects
        assert runner in {s["name"] for s in subjects}


# --- volumes and namespaces -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "namespace", "shared_mode"), [
    ("base", "kubeflow-user", "ReadWriteMany"),
    ("overlays/production", "kubeflow-user", "ReadWriteMany"),
    ("overlays/kind", "kubeflow", "ReadWriteOnce"),  # kind's local-path provisioner, one node
])
def test_volumes_and_namespace(name, namespace, shared_mode):
    assert {doc["metadata"].get("namespace") for doc in build(name)} == {namespace}
    volumes = objects(name, "PersistentVolumeClaim")
    assert set(volumes) == {"kftune-cache", SHARED_VOLUME}
    assert volumes[SHARED_VOLUME]["spec"]["accessModes"] == [shared_mode]
    # the volume the train step mounts by default (kftune compile --shared-pvc) and TrainJobs use
    assert TrainResources().shared_pvc == SHARED_VOLUME
