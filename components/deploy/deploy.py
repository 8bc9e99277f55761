"""Serving: create or update a KServe ``InferenceService`` for a published model and wait until it is Ready.

The predictor names the model by format and runtime, not by image. A classification model
(``task="classification"``)::

    spec.predictor:
      serviceAccountName: kftune-serving        # its secrets let the storage initializer read storageUri
      minReplicas: 1
      maxReplicas: 1
      canaryTrafficPercent: 10                  # only on an update, and only when asked for
      model:
        modelFormat: {name: kftune-onnx}
        runtime: kftune-onnx                    # the ServingRuntime (manifests/) that runs `kftune serve`
        storageUri: s3://models/sentiment/v3    # downloaded to /mnt/models before the server starts
        resources: {requests: {cpu: "1", memory: 2Gi}, limits: {cpu: "1", memory: 2Gi}}

A causal LM (``task="causal-lm"``) goes to KServe's Hugging Face runtime, which loads the merged
model at the export's root from /mnt/models (with vLLM where it has a GPU, transformers
otherwise) and serves OpenAI's completions and chat completions::

      model:
        modelFormat: {name: huggingface}
        runtime: kserve-huggingfaceserver       # KServe's ClusterServingRuntime
        storageUri: s3://models/assistant/v2
        args: [--model_name=assistant, --task=text_generation, --max_model_len=512]
        resources: {requests: {cpu: "4", memory: 8Gi, nvidia.com/gpu: "1"}, limits: {...the same}}

The export's LoRA adapter (``adapter/``) is not served: the export's root already holds the
merged model, and vLLM's ``--lora-modules`` applies an adapter on top of the *base* model, which
the published export does not contain.

The document is built from the kserve SDK's own models and serialized by the Kubernetes client.
A new InferenceService is created; an existing one is updated with a JSON merge patch of its
predictor, which keeps what kftune does not set (a transformer, annotations, env, ...), and
then the new generation is followed until KServe reports it Ready.

When is the status about *our* change? KServe copies ``status.observedGeneration`` from the
Knative Service (serverless mode) or the Deployment (raw mode) it manages, not from the
InferenceService itself (``PropagateStatus`` / ``PropagateRawStatus`` in upstream's
pkg/apis/serving/v1beta1/inference_service_status.go). Those generations can run ahead of the
InferenceService's (a Deployment's goes up with every scale) or behind it, so the upstream
SDK's ``observedGeneration >= metadata.generation`` can accept the Ready of the previous
revision, or never be satisfied. After a change of the spec, a status counts only once its
``observedGeneration`` has moved past the one it had before the change; in serverless mode the
predictor's latest created revision must also be its latest ready one (what KServe itself
calls Loaded). A patch that changes nothing (a re-run with the same inputs) leaves the
generation alone, and then the current status is the answer.

Nothing is deleted. A failed or timed-out rollout leaves the InferenceService as KServe has it:
an update that fails keeps serving the previous revision (Knative keeps routing to the last
ready one), and a new one that fails stays, not Ready, with its pods, events and logs for
``kubectl describe``; the next deploy of the same name patches it in place.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import kserve
from kserve.constants import constants as kserve_constants
from kubernetes import client
from kubernetes.client.rest import ApiException

from kftune.cluster.kube import (
    api_error,
    check_name,
    check_namespace,
    check_quantity,
    current_namespace,
    is_dns_subdomain,
)
from kftune.cluster.lifecycle import (
    RETRY_DELAY_SECONDS,
    Cleanup,
    ClusterResource,
    Outcome,
    ResourceApi,
    emitter,
    names_object,
    run_resource,
)
from kftune.components.deploy.config import CAUSAL_LM_MODEL_FORMAT, DeployConfig
from kftune.errors import ConfigError, KftuneError
from kftune.settings.fields import check_settings, same_as
from kftune.tasks import DEFAULT_TASK, TASKS, task_named

GPU_RESOURCE = "nvidia.com/gpu"
# KServe's Hugging Face runtime (python/huggingfaceserver/huggingfaceserver/__main__.py): its MLTask names
HF_TEXT_GENERATION = "text_generation"

logger = logging.getLogger(__name__)

GROUP = kserve_constants.KSERVE_GROUP  # serving.kserve.io
VERSION = kserve_constants.KSERVE_V1BETA1_VERSION  # v1beta1
API_VERSION = kserve_constants.KSERVE_V1BETA1
KIND = kserve_constants.KSERVE_KIND_INFERENCESERVICE
PLURAL = kserve_constants.KSERVE_PLURAL_INFERENCESERVICE
LABELS = {"app.kubernetes.io/managed-by": "kftune", "app.kubernetes.io/component": "deploy"}

DEFAULT_TIMEOUT_SECONDS = 15 * 60
DEFAULT_POLL_SECONDS = 5.0
# A failure signal must hold this long before the deploy gives up: KServe reports some on the
# way (a ReconcileFailed after an update conflict, the previous spec's model status before its
# first reconcile of the new one) and clears them on the next reconcile.
FAILURE_GRACE_SECONDS = 30.0

URI_SCHEMES = ("s3", "gs", "pvc", "http", "https")
# Knative names the predictor's revisions <name>-predictor-00001: a DNS label of at most 63.
MAX_NAME_LENGTH = 63 - len("-predictor-00001")
MODEL_FORMAT_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
# Predictor fields that each name the model another way; an InferenceService has exactly one.
OTHER_IMPLEMENTATIONS = (
    "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "pmml", "lightgbm", "paddle", "huggingface",
)  # fmt: skip

READY = "Ready"
# Condition reasons that mean the rollout failed rather than that it is still under way (KServe
# and Knative also report False conditions on the way, e.g. "Predictor ingress not created" or
# a raw Deployment's MinimumReplicasUnavailable while its pods start).
FAILURE_REASONS = {
    "RevisionFailed",  # Knative: the new revision cannot become ready (crash, image pull, missing service account)
    "ProgressDeadlineExceeded",  # a Deployment or revision that did not become available in time
    "FailedCreate",  # raw mode: the ReplicaSet cannot create pods (quota, service account)
    "ReconcileFailed",  # KServe could not reconcile the predictor
    "InvalidGPUAllocation",
    "InvalidWorkerSpecNotSet",
    "Stopped",  # the serving.kserve.io/stop annotation
}
# modelStatus.transitionStatus values that mean the model will not load without a change.
MODEL_FAILURES = {"InvalidSpec", "BlockedByFailedLoad"}
# The conditions a failure is reported by, most specific first.
COMPONENT_CONDITIONS = (
    "PredictorReady", "PredictorConfigurationReady", "PredictorRouteReady", "TransformerReady", "ExplainerReady",
    "IngressReady", READY,
)  # fmt: skip


@dataclass
class DeployRequest:
    """What to serve, where, and with what: the InferenceService's predictor. Its defaults and ranges are those of
    the :class:`DeployConfig` settings it is made from (:func:`deploy_request`)."""

    model_uri: str
    """The published model: s3://, gs://, pvc:// or http(s)://; KServe's storage initializer copies it to
    /mnt/models."""
    name: str
    """The InferenceService's name (a DNS-1035 label); its URL starts with it."""
    namespace: str = same_as(DeployConfig, "deploy_namespace")
    """"": this pod's namespace (``default`` outside a cluster)."""
    runtime: str = same_as(DeployConfig, "serving_runtime")
    """The ServingRuntime (or ClusterServingRuntime) that serves the model."""
    model_format: str = same_as(DeployConfig, "serving_model_format")
    """The model format, one the runtime lists in its supportedModelFormats."""
    service_account: str = same_as(DeployConfig, "serving_service_account")
    """Service account of the predictor pods, whose secrets carry the storage credentials ("": the
    namespace's default)."""
    min_replicas: int = same_as(DeployConfig, "serving_min_replicas")
    """0 lets KServe scale to zero (serverless mode only)."""
    max_replicas: int = same_as(DeployConfig, "serving_max_replicas")
    canary_traffic_percent: int = same_as(DeployConfig, "canary_traffic_percent")
    """-1: the new revision gets all traffic; 0-100: its share, the rest staying on the previous one (updates only)."""
    cpu: str = same_as(DeployConfig, "serving_cpu")
    """CPU request and limit per replica, a Kubernetes quantity."""
    memory: str = same_as(DeployConfig, "serving_memory")
    """Memory request and limit per replica, a Kubernetes quantity."""
    task: str = DEFAULT_TASK
    """The model's task, whose ``serving`` protocol says the runtime: ``kserve`` (kftune serve on ONNX Runtime) or
    ``openai`` (a causal LM, served by KServe's Hugging Face runtime, which is then given its arguments)."""
    gpus: int = same_as(DeployConfig, "serving_gpus")
    """GPUs (``nvidia.com/gpu``) requested and limited per replica (OpenAI-protocol models only)."""
    max_model_len: int = same_as(DeployConfig, "serving_max_model_len")
    """OpenAI-protocol models: the runtime's ``--max_model_len``, the most tokens of prompt and completion (0: the
    model's ``max_position_embeddings``)."""

    def __post_init__(self):
        if self.namespace == "":
            self.namespace = current_namespace()
        self.validate()

    @property
    def generative(self) -> bool:
        """Whether the model is served over OpenAI-compatible endpoints (KServe's Hugging Face runtime)."""
        return TASKS[self.task].serving == "openai"

    @property
    def sizing(self) -> str:
        """The replicas and their resources, for the log."""
        gpus = f", {self.gpus} GPU" if self.gpus else ""
        return f"{self.min_replicas}-{self.max_replicas} replica(s) of {self.cpu} CPU, {self.memory}{gpus}"

    @property
    def canary(self) -> int | None:
        """The canary share asked for, or None for no canary."""
        return None if self.canary_traffic_percent == -1 else self.canary_traffic_percent

    def validate(self) -> None:
        """Reject what KServe or the cluster would reject (or misread), naming the parameter."""
        check_settings(self)
        check_model_uri(self.model_uri)
        check_name(self.name, MAX_NAME_LENGTH, "a DNS-1035 label, as KServe requires")
        check_namespace(self.namespace, " (or '' for this pod's own)")
        if not is_dns_subdomain(self.runtime):
            raise ConfigError(
                f"runtime must be the name of a ServingRuntime (a DNS-1123 subdomain), got {self.runtime!r}"
            )
        if not isinstance(self.model_format, str) or not MODEL_FORMAT_NAME.match(self.model_format):
            raise ConfigError(
                f"model_format must be a model format name such as 'kftune-onnx' (letters, digits, '-', '_', '.'), "
                f"got {self.model_format!r}"
            )
        account = self.service_account
        if not isinstance(account, str) or (account and not is_dns_subdomain(account)):
            raise ConfigError(
                f"service_account must be a service account name (a DNS-1123 subdomain) or '' for the namespace's "
                f"default, got {self.service_account!r}"
            )
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not self.generative and (self.gpus or self.max_model_len):
            generative = [name for name, task in TASKS.items() if task.serving == "openai"]
            raise ConfigError(
                f"gpus ({self.gpus}) and max_model_len ({self.max_model_len}) apply to task"
                f"{'s' * (len(generative) > 1)} {', '.join(map(repr, generative))}; a {self.task} model is served by "
                "kftune serve on ONNX Runtime (CPU), so leave them 0"
            )
        if self.min_replicas > self.max_replicas:
            raise ConfigError(
                f"min_replicas must be between 0 (scale to zero) and max_replicas ({self.max_replicas}), "
                f"got {self.min_replicas}"
            )
        for name in ("cpu", "memory"):
            check_quantity(name, getattr(self, name), "'1', '500m' or '2Gi'")


def deploy_request(settings: DeployConfig, model_uri: str, task: str = DEFAULT_TASK) -> DeployRequest:
    """The checked DeployRequest for the ``task``'s model at ``model_uri`` under ``settings`` (raises ConfigError
    naming a bad value): a model served over OpenAI-compatible endpoints (a causal LM) goes to
    ``causal_lm_serving_runtime`` as format huggingface."""
    check_settings(settings)
    if task_named(task).serving == "openai":
        runtime, model_format = settings.causal_lm_serving_runtime, CAUSAL_LM_MODEL_FORMAT
    else:
        runtime, model_format = settings.serving_runtime, settings.serving_model_format
    return DeployRequest(
        model_uri=model_uri, name=settings.deploy_name, namespace=settings.deploy_namespace, runtime=runtime,
        model_format=model_format, service_account=settings.serving_service_account,
        min_replicas=settings.serving_min_replicas, max_replicas=settings.serving_max_replicas,
        canary_traffic_percent=settings.canary_traffic_percent, cpu=settings.serving_cpu,
        memory=settings.serving_memory, task=task, gpus=settings.serving_gpus,
        max_model_len=settings.serving_max_model_len,
    )


def check_model_uri(uri: str) -> None:
    """Reject a model URI that KServe's storage initializer cannot fetch, or that is not one kftune publishes to."""
    expected = "an s3://bucket/path, gs://bucket/path, pvc://claim/path or http(s):// URI"
    if not isinstance(uri, str) or not uri or any(c.isspace() for c in uri):
        raise ConfigError(f"model_uri must be {expected}, got {uri!r}")
    parts = urlsplit(uri)
    if parts.scheme not in URI_SCHEMES:
        hint = "" if parts.scheme else " (a local path cannot be served: publish the model to object storage or a PVC)"
        raise ConfigError(f"model_uri must be {expected}{hint}, got {uri!r}")
    if not parts.netloc:
        what = {"s3": "a bucket", "gs": "a bucket", "pvc": "a PersistentVolumeClaim name"}.get(parts.scheme, "a host")
        raise ConfigError(f"model_uri must name {what} after {parts.scheme}://, got {uri!r}")
    if parts.scheme == "pvc" and not is_dns_subdomain(parts.netloc):
        raise ConfigError(
            f"model_uri: {parts.netloc!r} is not a PersistentVolumeClaim name (pvc://claim/path), got {uri!r}"
        )


def build_inference_service(request: DeployRequest, *, update: bool = False) -> kserve.V1beta1InferenceService:
    """The InferenceService for ``request``, as the kserve SDK's model.

    The canary share is set only for an ``update``: a new InferenceService has no previous
    revision to share the traffic with. CPU and memory are both requested and limited
    (Guaranteed QoS: a replica's latency does not depend on its neighbours).
    """
    request.validate()
    resources = {"cpu": request.cpu, "memory": request.memory}
    if request.gpus:
        resources[GPU_RESOURCE] = str(request.gpus)
    predictor = kserve.V1beta1PredictorSpec(
        service_account_name=request.service_account or None,
        min_replicas=request.min_replicas,
        max_replicas=request.max_replicas,
        canary_traffic_percent=request.canary if update else None,
        model=kserve.V1beta1ModelSpec(
            model_format=kserve.V1beta1ModelFormat(name=request.model_format),
            runtime=request.runtime,
            storage_uri=request.model_uri,
            resources=client.V1ResourceRequirements(requests=dict(resources), limits=dict(resources)),
            args=runtime_args(request) or None,
        ),
    )
    return kserve.V1beta1InferenceService(
        api_version=API_VERSION,
        kind=KIND,
        metadata=client.V1ObjectMeta(name=request.name, namespace=request.namespace, labels=dict(LABELS)),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=predictor),
    )


def runtime_args(request: DeployRequest) -> list[str]:
    """Arguments for the runtime's container: for a causal LM, those of KServe's Hugging Face runtime (its
    ClusterServingRuntime passes ``--model_name={{.Name}}`` too; the same value, said where it is read)."""
    if not request.generative:
        return []
    args = [f"--model_name={request.name}", f"--task={HF_TEXT_GENERATION}"]
    if request.max_model_len:
        args.append(f"--max_model_len={request.max_model_len}")
    return args


def inference_service_doc(request: DeployRequest, *, update: bool = False) -> dict:
    """:func:`build_inference_service` as the JSON document sent to the API server."""
    with client.ApiClient() as serializer:
        doc = serializer.sanitize_for_serialization(build_inference_service(request, update=update))
    model = doc["spec"]["predictor"]["model"]
    if not model.get("name"):  # the SDK's default "": let KServe name the container
        model.pop("name", None)
    return doc


def update_patch(request: DeployRequest, existing: dict) -> dict:
    """The JSON merge patch that puts ``request``'s predictor into the ``existing`` InferenceService.

    Fields kftune does not set stay as they are. Explicit nulls remove a canary share left by an
    earlier deploy (unless a new one is asked for), any other way the predictor named its
    model (``sklearn:``, ``onnx:``, ...), since a predictor has exactly one, and the container
    arguments of another runtime (they are that runtime's: a classification model that replaces
    a causal LM must not inherit the Hugging Face runtime's ``--task``). A GPU limit left by an
    earlier deploy is removed the same way.
    """
    doc = inference_service_doc(request, update=True)
    predictor = doc["spec"]["predictor"]
    predictor["canaryTrafficPercent"] = request.canary
    existing_predictor = (existing.get("spec") or {}).get("predictor") or {}
    existing_model = existing_predictor.get("model") or {}
    other_runtime = existing_model.get("runtime") != request.runtime
    if "args" not in predictor["model"] and existing_model.get("args") and other_runtime:
        predictor["model"]["args"] = None
    if not request.gpus:
        for kind in ("requests", "limits"):
            if GPU_RESOURCE in ((existing_model.get("resources") or {}).get(kind) or {}):
                predictor["model"]["resources"][kind][GPU_RESOURCE] = None
    for key in OTHER_IMPLEMENTATIONS:
        if key in existing_predictor:
            predictor[key] = None
    return {"metadata": {"labels": dict(LABELS)}, "spec": {"predictor": predictor}}


# --- deploying ----------------------------------------------------------------------------------


@dataclass
class _Target:
    """What the status must show to be about this deploy's spec."""

    generation: int | None
    """metadata.generation after the create or patch."""
    changed: bool
    """The create or patch changed the spec (a patch that changes nothing keeps the generation)."""
    observed_before: int | None
    """status.observedGeneration before the change (None: created, or never reconciled)."""


def deploy_inference_service(
    request: DeployRequest,
    api_client: client.ApiClient | None = None,
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    failure_grace_seconds: float = FAILURE_GRACE_SECONDS,
    retry_delay_seconds: float = RETRY_DELAY_SECONDS,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Create or update the InferenceService, wait until its new generation is Ready; return a handle.

    Returns ``{"name", "namespace", "url", "created", "generation", "revision", "traffic",
    "duration_seconds"}``: ``url`` is ``status.url`` (or ``status.address.url`` where KServe
    gives no external one), ``revision`` the predictor's latest ready revision (serverless
    mode), ``traffic`` its traffic split. Condition changes go to ``log`` (default: this module's
    logger). Raises :class:`KftuneError` with KServe's own reason and message when the rollout
    fails (a failure signal held for ``failure_grace_seconds``), when it is not Ready after
    ``timeout_seconds``, when the API refuses a request (RBAC, KServe not installed, the
    webhook's validation) or keeps failing (transient errors are retried with backoff starting
    at ``retry_delay_seconds``), and on SIGTERM. Nothing is deleted (see the module docstring).
    """
    if not timeout_seconds > 0:
        raise ConfigError(f"the timeout (timeout_minutes) must be > 0, got {timeout_seconds / 60:g} minutes")
    request.validate()
    isvc = _InferenceService(request, emitter(log, logger), failure_grace_seconds)
    finished = run_resource(
        isvc, api_client, timeout_seconds=timeout_seconds, poll_seconds=poll_seconds,
        retry_delay_seconds=retry_delay_seconds,
    )  # fmt: skip
    status = finished.obj.get("status") or {}
    predictor = (status.get("components") or {}).get("predictor") or {}
    url = status.get("url") or (status.get("address") or {}).get("url")
    if not url:
        raise KftuneError(
            f"{isvc} is Ready but has neither status.url nor status.address.url "
            f"(check KServe's ingress configuration: kubectl get inferenceservice -n {request.namespace} "
            f"{request.name} -o yaml)"
        )
    handle = {
        "name": request.name,
        "namespace": request.namespace,
        "url": url,
        "created": finished.created,
        "generation": (finished.obj.get("metadata") or {}).get("generation"),
        "revision": predictor.get("latestReadyRevision"),
        "traffic": predictor.get("traffic") or [],
        "duration_seconds": finished.seconds,
    }
    split = ", ".join(f"{t.get('percent')}% to {t.get('revisionName')}" for t in handle["traffic"] if t.get("percent"))
    isvc.emit(f"{isvc} is Ready at {url}" + (f" (traffic: {split})" if split else ""))
    return handle


class _InferenceService(ClusterResource):
    """The InferenceService as the shared lifecycle runs it: created or patched in place, followed
    until its new generation is Ready, and kept (it is the deployment)."""

    kind = "InferenceService"
    kubectl_kind = "inferenceservice"
    group, version, plural = GROUP, VERSION, PLURAL
    labels = LABELS
    updates_in_place = True

    def __init__(self, request: DeployRequest, emit: Callable[[str], None], failure_grace_seconds: float):
        super().__init__(
            request.namespace, request.name, emit, cleanup=Cleanup.KEEP, failure_grace_seconds=failure_grace_seconds
        )
        self.request = request
        self.target = _Target(generation=None, changed=True, observed_before=None)
        self.status: dict = {}
        self.seen: dict[str, tuple] = {}
        self.model_state: tuple | None = None
        self.announced_wait = False

    def body(self) -> dict:
        return inference_service_doc(self.request)

    def created(self, obj: dict) -> None:
        r = self.request
        if r.canary is not None:
            self.emit(
                f"{self} is new: canary_traffic_percent={r.canary} ignored "
                "(there is no previous revision to share the traffic with)"
            )
        self.emit(
            f"{self} created: model {r.model_uri} ({r.model_format}) on runtime {r.runtime}, "
            f"{r.sizing}"
        )
        generation = (obj.get("metadata") or {}).get("generation")
        self.target = _Target(generation=generation, changed=True, observed_before=None)

    def update(self, api: ResourceApi, existing: dict) -> None:
        """Patch the predictor of the existing InferenceService."""
        r = self.request
        labels = (existing.get("metadata") or {}).get("labels") or {}
        if labels.get("app.kubernetes.io/managed-by") != LABELS["app.kubernetes.io/managed-by"]:
            self.emit(f"warning: {self} was not created by kftune; updating its predictor anyway")
        before_generation = (existing.get("metadata") or {}).get("generation")
        before_observed = (existing.get("status") or {}).get("observedGeneration")
        patched = api.patch(update_patch(r, existing))
        generation = (patched.get("metadata") or {}).get("generation")
        changed = generation is None or before_generation is None or generation != before_generation
        canary = f", {r.canary}% of the traffic to the new revision" if r.canary is not None else ""
        if changed:
            self.emit(
                f"{self} updated (generation {before_generation} -> {generation}): model "
                f"{r.model_uri} ({r.model_format}) on runtime {r.runtime}, "
                f"{r.sizing}{canary}"
            )
        else:
            self.emit(f"{self} already has this spec (generation {generation} unchanged)")
        self.target = _Target(generation=generation, changed=changed, observed_before=before_observed)

    def observe(self, api: ResourceApi, obj: dict) -> Outcome | None:
        self.status = status = obj.get("status") or {}
        current = is_current(status, self.target)
        self.report(status, current)
        if current and is_ready(status):
            return Outcome(True, "Ready")
        failure = failure_reason(status, current)
        return None if failure is None else Outcome(False, failure + _hint(self.request, failure))

    def report(self, status: dict, current: bool) -> None:
        """Report what is new since the last poll: conditions, model state, reconcile of the new generation."""
        if not current:
            if not self.announced_wait:
                self.announced_wait = True
                observed = status.get("observedGeneration")
                self.emit(
                    f"{self}: waiting for KServe to reconcile generation {self.target.generation} "
                    f"(status.observedGeneration: {'none yet' if observed is None else observed})"
                )
            return
        for kind, condition in conditions_of(status).items():
            key = (condition.get("status"), condition.get("reason"), condition.get("message"))
            if self.seen.get(kind) == key:
                continue
            self.seen[kind] = key
            self.emit(f"{self}: {describe(kind, condition)}")
        model = status.get("modelStatus") or {}
        states = model.get("states") or {}
        state = (model.get("transitionStatus"), states.get("activeModelState"), states.get("targetModelState"))
        if any(state) and state != self.model_state:
            self.model_state = state
            self.emit(f"{self}: model {state[0]} (active {state[1] or '-'}, target {state[2] or '-'})")

    def state(self) -> str:
        status, target = self.status, self.target
        if not is_current(status, target):
            return (
                f"KServe has not reconciled generation {target.generation} yet: status.observedGeneration is "
                f"{status.get('observedGeneration')}, was {target.observed_before} before the change"
            )
        ready = conditions_of(status).get(READY)
        if not ready:
            return "no Ready condition yet"
        summary = describe(READY, ready)
        predictor = (status.get("components") or {}).get("predictor") or {}
        created, ready_revision = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
        if created and created != ready_revision:
            summary += f"; revision {created} not ready (latest ready: {ready_revision or 'none'})"
        return summary

    def failure_error(self, reason: str, seconds: float) -> str:
        return f"{self} failed: {reason}"

    def timeout_error(self, seconds: float, timeout_seconds: float) -> str:
        return f"{self} not Ready after {seconds:.0f} s (last state: {self.state()})"

    def refused(self, verb: str, e: ApiException) -> str:
        what = f"cannot {verb} {self}"
        detail = api_error(e)
        if e.status == 403 and "admission webhook" in detail:
            return f"{what}: rejected by KServe's validating webhook: {detail}"
        if e.status == 403:
            return (
                f"{what}: not allowed (RBAC); the pipeline's service account needs get, create and patch on "
                f"inferenceservices.{GROUP} in namespace {self.namespace} (manifests/base/rbac.yaml): {detail}"
            )
        if e.status == 404 and names_object(e, self.namespace, kind="namespaces"):
            return f"{what}: namespace {self.namespace!r} not found: {detail}"
        if e.status == 404 and not names_object(e, self.name):
            return (
                f"{what}: KServe is not installed (no inferenceservices.{GROUP} CRD: the API {GROUP}/{VERSION} "
                f"is not served): {detail}"
            )
        if e.status == 404:
            return f"{what}: it is gone (deleted meanwhile?): {detail}"
        if e.status in (400, 422):
            return f"{what}: rejected as invalid: {detail}"
        return f"{what}: {detail}"


def is_current(status: dict, target: _Target) -> bool:
    """Whether ``status`` describes the spec this deploy wrote (see the module docstring)."""
    if not target.changed:
        return True
    observed = status.get("observedGeneration")
    if observed is None:
        return False
    if target.observed_before is None:  # created, or never reconciled before: any reconcile is of our spec
        return True
    return observed > target.observed_before


def conditions_of(status: dict) -> dict[str, dict]:
    return {c.get("type"): c for c in status.get("conditions") or [] if c.get("type")}


def is_ready(status: dict) -> bool:
    """Ready, and (serverless mode) the latest created revision is the latest ready one."""
    ready = conditions_of(status).get(READY)
    if not ready or ready.get("status") != "True":
        return False
    predictor = (status.get("components") or {}).get("predictor") or {}
    created, ready_revision = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
    return not created or created == ready_revision


def failure_reason(status: dict, current: bool) -> str | None:
    """KServe's own words for a rollout that failed, or None while it may still succeed.

    A failed model (the runtime not found, the storage initializer or the server crashing) is
    reported by ``modelStatus``; a failed revision or Deployment by a condition whose reason is
    one of :data:`FAILURE_REASONS`. Conditions count only when the status is ``current``; an
    ``InvalidSpec`` model status is set without the generation moving, so it counts anyway.
    """
    model = status.get("modelStatus") or {}
    transition = model.get("transitionStatus")
    if transition in MODEL_FAILURES and (current or transition == "InvalidSpec"):
        info = model.get("lastFailureInfo") or {}
        detail = ": ".join(str(part) for part in (info.get("reason"), info.get("message")) if part)
        exit_code = f" (exit code {info['exitCode']})" if info.get("exitCode") else ""
        return f"model {transition}" + (f": {detail}" if detail else "") + exit_code
    if not current:
        return None
    conditions = conditions_of(status)
    for kind in [*COMPONENT_CONDITIONS, *sorted(set(conditions) - set(COMPONENT_CONDITIONS))]:
        condition = conditions.get(kind)
        if condition and condition.get("status") == "False" and condition.get("reason") in FAILURE_REASONS:
            return describe(kind, condition)
    return None


def describe(kind: str, condition: dict) -> str:
    """``PredictorReady=False (RevisionFailed): message``, as far as the condition has them."""
    reason = f" ({condition['reason']})" if condition.get("reason") else ""
    message = f": {condition['message']}" if condition.get("message") else ""
    return f"{kind}={condition.get('status')}{reason}{message}"


def _hint(request: DeployRequest, failure: str) -> str:
    if "RuntimeNotRecognized" in failure or "NoSupportingRuntime" in failure:
        return (
            f" [is the ServingRuntime {request.runtime!r}, supporting model format {request.model_format!r}, "
            f"installed in namespace {request.namespace}? kubectl get servingruntimes -n {request.namespace}]"
        )
    if "(Stopped)" in failure:
        return " [the InferenceService is stopped: remove its serving.kserve.io/stop annotation]"
    return ""
