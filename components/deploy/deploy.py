"""Serving: create or update a KServe ``InferenceService`` for a published model and wait until it is Ready.

The predictor names the model by format and runtime, not by image::

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

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import kserve
from kserve.constants import constants as kserve_constants
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity
from urllib3.exceptions import HTTPError

from kftune.components.common.errors import ConfigError, KftuneError
from kftune.components.common.kube import (
    DNS_1123_LABEL,
    DNS_1123_SUBDOMAIN,
    DNS_LABEL,
    MAX_API_ERRORS,
    REQUEST_TIMEOUT_SECONDS,
    current_namespace,
    is_transient,
    kube_api_client,
)
from kftune.components.common.kube import api_error as _api_error

log = logging.getLogger(__name__)

GROUP = kserve_constants.KSERVE_GROUP  # serving.kserve.io
VERSION = kserve_constants.KSERVE_V1BETA1_VERSION  # v1beta1
API_VERSION = kserve_constants.KSERVE_V1BETA1
KIND = kserve_constants.KSERVE_KIND_INFERENCESERVICE
PLURAL = kserve_constants.KSERVE_PLURAL_INFERENCESERVICE
LABELS = {"app.kubernetes.io/managed-by": "kftune", "app.kubernetes.io/component": "deploy"}

DEFAULT_RUNTIME = "kftune-onnx"
DEFAULT_MODEL_FORMAT = "kftune-onnx"
DEFAULT_SERVICE_ACCOUNT = "kftune-serving"
DEFAULT_TIMEOUT_SECONDS = 15 * 60
DEFAULT_POLL_SECONDS = 5.0
RETRY_DELAY_SECONDS = 1.0  # first wait after a transient API error; doubles up to MAX_RETRY_DELAY_SECONDS
MAX_RETRY_DELAY_SECONDS = 30.0
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
    """What to serve, where, and with what: the InferenceService's predictor."""

    model_uri: str
    """The published model: s3://, gs://, pvc:// or http(s)://; KServe's storage initializer copies it to
    /mnt/models."""
    name: str
    """The InferenceService's name (a DNS-1035 label); its URL starts with it."""
    namespace: str = ""
    """"": this pod's namespace (``default`` outside a cluster)."""
    runtime: str = DEFAULT_RUNTIME
    """The ServingRuntime (or ClusterServingRuntime) that serves the model."""
    model_format: str = DEFAULT_MODEL_FORMAT
    """The model format, one the runtime lists in its supportedModelFormats."""
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    """Service account of the predictor pods, whose secrets carry the storage credentials ("": the
    namespace's default)."""
    min_replicas: int = 1
    """0 lets KServe scale to zero (serverless mode only)."""
    max_replicas: int = 1
    canary_traffic_percent: int = -1
    """-1: the new revision gets all traffic; 0-100: its share, the rest staying on the previous one (updates only)."""
    cpu: str = "1"
    """CPU request and limit per replica, a Kubernetes quantity."""
    memory: str = "2Gi"
    """Memory request and limit per replica, a Kubernetes quantity."""

    def __post_init__(self):
        if self.namespace == "":
            self.namespace = current_namespace()
        self.validate()

    @property
    def canary(self) -> int | None:
        """The canary share asked for, or None for no canary."""
        return None if self.canary_traffic_percent == -1 else self.canary_traffic_percent

    def validate(self) -> None:
        """Reject what KServe or the cluster would reject (or misread), naming the parameter."""
        check_model_uri(self.model_uri)
        if not isinstance(self.name, str) or len(self.name) > MAX_NAME_LENGTH or not DNS_LABEL.match(self.name):
            raise ConfigError(
                f"name must be at most {MAX_NAME_LENGTH} lowercase letters, digits and '-', starting with a letter "
                f"and ending with a letter or digit (a DNS-1035 label, as KServe requires), got {self.name!r}"
            )
        if not isinstance(self.namespace, str) or len(self.namespace) > 63 or not DNS_1123_LABEL.match(self.namespace):
            raise ConfigError(f"namespace must be a DNS-1123 label (or '' for this pod's own), got {self.namespace!r}")
        if not isinstance(self.runtime, str) or len(self.runtime) > 253 or not DNS_1123_SUBDOMAIN.match(self.runtime):
            raise ConfigError(
                f"runtime must be the name of a ServingRuntime (a DNS-1123 subdomain), got {self.runtime!r}"
            )
        if not isinstance(self.model_format, str) or not MODEL_FORMAT_NAME.match(self.model_format):
            raise ConfigError(
                f"model_format must be a model format name such as 'kftune-onnx' (letters, digits, '-', '_', '.'), "
                f"got {self.model_format!r}"
            )
        account = self.service_account
        if not isinstance(account, str) or (account and (len(account) > 253 or not DNS_1123_SUBDOMAIN.match(account))):
            raise ConfigError(
                f"service_account must be a service account name (a DNS-1123 subdomain) or '' for the namespace's "
                f"default, got {self.service_account!r}"
            )
        for name in ("min_replicas", "max_replicas", "canary_traffic_percent"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if self.max_replicas < 1:
            raise ConfigError(f"max_replicas must be >= 1, got {self.max_replicas}")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(
                f"min_replicas must be between 0 (scale to zero) and max_replicas ({self.max_replicas}), "
                f"got {self.min_replicas}"
            )
        if self.canary_traffic_percent != -1 and not 0 <= self.canary_traffic_percent <= 100:
            raise ConfigError(
                f"canary_traffic_percent must be -1 (no canary: all traffic to the new revision) or 0-100, "
                f"got {self.canary_traffic_percent}"
            )
        for name in ("cpu", "memory"):
            value = getattr(self, name)
            try:
                quantity = parse_quantity(value)
            except (ValueError, TypeError) as e:
                raise ConfigError(
                    f"{name} must be a Kubernetes quantity such as '1', '500m' or '2Gi', got {value!r}"
                ) from e
            if quantity <= 0:
                raise ConfigError(f"{name} must be > 0, got {value!r}")


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
    if parts.scheme == "pvc" and (len(parts.netloc) > 253 or not DNS_1123_SUBDOMAIN.match(parts.netloc)):
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
        ),
    )
    return kserve.V1beta1InferenceService(
        api_version=API_VERSION,
        kind=KIND,
        metadata=client.V1ObjectMeta(name=request.name, namespace=request.namespace, labels=dict(LABELS)),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=predictor),
    )


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
    earlier deploy (unless a new one is asked for) and any other way the predictor named its
    model (``sklearn:``, ``onnx:``, ...), since a predictor has exactly one.
    """
    doc = inference_service_doc(request, update=True)
    predictor = doc["spec"]["predictor"]
    predictor["canaryTrafficPercent"] = request.canary
    existing_predictor = (existing.get("spec") or {}).get("predictor") or {}
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
    at ``retry_delay_seconds``). Nothing is deleted (see the module docstring).
    """
    if not timeout_seconds > 0:
        raise ConfigError(f"the timeout (timeout_minutes) must be > 0, got {timeout_seconds / 60:g} minutes")
    request.validate()
    emit = log or _log_line
    own_client = api_client is None
    api_client = api_client or kube_api_client()
    api = _Api(client.CustomObjectsApi(api_client), request, retry_delay_seconds, emit)
    start = time.monotonic()
    try:
        existing = api.get()
        if existing is None:
            created, target = _create(api, request, emit)
        else:
            created, target = False, None
        if not created:  # it existed, or someone else created it between our get and create
            existing = existing or api.get(required=True)
            target = _update(api, request, existing, emit)
        isvc = _wait(api, request, target, start + timeout_seconds, poll_seconds, failure_grace_seconds, emit)
    finally:
        if own_client:
            api_client.close()
    status = isvc.get("status") or {}
    predictor = (status.get("components") or {}).get("predictor") or {}
    url = status.get("url") or (status.get("address") or {}).get("url")
    if not url:
        raise KftuneError(
            f"InferenceService {api.isvc} is Ready but has neither status.url nor status.address.url "
            f"(check KServe's ingress configuration: kubectl get inferenceservice -n {request.namespace} "
            f"{request.name} -o yaml)"
        )
    handle = {
        "name": request.name,
        "namespace": request.namespace,
        "url": url,
        "created": created,
        "generation": (isvc.get("metadata") or {}).get("generation"),
        "revision": predictor.get("latestReadyRevision"),
        "traffic": predictor.get("traffic") or [],
        "duration_seconds": time.monotonic() - start,
    }
    split = ", ".join(f"{t.get('percent')}% to {t.get('revisionName')}" for t in handle["traffic"] if t.get("percent"))
    emit(f"InferenceService {api.isvc} is Ready at {url}" + (f" (traffic: {split})" if split else ""))
    return handle


def _create(api: _Api, request: DeployRequest, emit) -> tuple[bool, _Target | None]:
    """Create the InferenceService; ``(False, None)`` if it turned out to exist already."""
    if request.canary is not None:
        emit(
            f"InferenceService {api.isvc} is new: canary_traffic_percent={request.canary} ignored "
            "(there is no previous revision to share the traffic with)"
        )
    doc = inference_service_doc(request)
    created = api.create(doc)
    if created is None:
        emit(f"InferenceService {api.isvc} was created meanwhile by someone else; updating it")
        return False, None
    emit(
        f"InferenceService {api.isvc} created: model {request.model_uri} ({request.model_format}) on runtime "
        f"{request.runtime}, {request.min_replicas}-{request.max_replicas} replica(s) of {request.cpu} CPU, "
        f"{request.memory}"
    )
    generation = (created.get("metadata") or {}).get("generation")
    return True, _Target(generation=generation, changed=True, observed_before=None)


def _update(api: _Api, request: DeployRequest, existing: dict, emit) -> _Target:
    """Patch the predictor of the existing InferenceService."""
    labels = (existing.get("metadata") or {}).get("labels") or {}
    if labels.get("app.kubernetes.io/managed-by") != LABELS["app.kubernetes.io/managed-by"]:
        emit(f"warning: InferenceService {api.isvc} was not created by kftune; updating its predictor anyway")
    before_generation = (existing.get("metadata") or {}).get("generation")
    before_observed = (existing.get("status") or {}).get("observedGeneration")
    patched = api.patch(update_patch(request, existing))
    generation = (patched.get("metadata") or {}).get("generation")
    changed = generation is None or before_generation is None or generation != before_generation
    canary = f", {request.canary}% of the traffic to the new revision" if request.canary is not None else ""
    if changed:
        emit(
            f"InferenceService {api.isvc} updated (generation {before_generation} -> {generation}): model "
            f"{request.model_uri} ({request.model_format}) on runtime {request.runtime}, "
            f"{request.min_replicas}-{request.max_replicas} replica(s) of {request.cpu} CPU, {request.memory}{canary}"
        )
    else:
        emit(f"InferenceService {api.isvc} already has this spec (generation {generation} unchanged)")
    return _Target(generation=generation, changed=changed, observed_before=before_observed)


def _wait(api: _Api, request: DeployRequest, target: _Target, deadline: float, poll_seconds, grace, emit) -> dict:
    """Poll until the InferenceService is Ready for ``target``; raise on a failure that holds for ``grace``."""
    progress = _Progress(api.isvc, emit)
    failing_since: float | None = None
    while True:
        isvc = api.get(required=True)
        status = isvc.get("status") or {}
        current = is_current(status, target)
        progress.report(status, current, target)
        if current and is_ready(status):
            return isvc
        failure = failure_reason(status, current)
        now = time.monotonic()
        if failure is None:
            failing_since = None
        else:
            failing_since = now if failing_since is None else failing_since
            if now - failing_since >= grace:
                raise KftuneError(
                    f"InferenceService {api.isvc} failed: {failure}{_hint(request, failure)}; left in place "
                    f"(kubectl describe inferenceservice -n {request.namespace} {request.name})"
                )
        remaining = deadline - now
        if remaining <= 0:
            raise KftuneError(
                f"InferenceService {api.isvc} not Ready after {progress.elapsed():.0f} s "
                f"(last state: {progress.summary(status, current, target)}); left in place "
                f"(kubectl describe inferenceservice -n {request.namespace} {request.name})"
            )
        time.sleep(min(poll_seconds, remaining))


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


class _Progress:
    """Reports what is new since the last poll: conditions, model state, reconcile of the new generation."""

    def __init__(self, isvc: str, emit: Callable[[str], None]):
        self.isvc = isvc
        self.emit = emit
        self.start = time.monotonic()
        self.seen: dict[str, tuple] = {}
        self.model_state: tuple | None = None
        self.announced_wait = False

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def report(self, status: dict, current: bool, target: _Target) -> None:
        if not current:
            if not self.announced_wait:
                self.announced_wait = True
                observed = status.get("observedGeneration")
                self.emit(
                    f"InferenceService {self.isvc}: waiting for KServe to reconcile generation {target.generation} "
                    f"(status.observedGeneration: {'none yet' if observed is None else observed})"
                )
            return
        for kind, condition in conditions_of(status).items():
            key = (condition.get("status"), condition.get("reason"), condition.get("message"))
            if self.seen.get(kind) == key:
                continue
            self.seen[kind] = key
            self.emit(f"InferenceService {self.isvc}: {describe(kind, condition)}")
        model = status.get("modelStatus") or {}
        states = model.get("states") or {}
        state = (model.get("transitionStatus"), states.get("activeModelState"), states.get("targetModelState"))
        if any(state) and state != self.model_state:
            self.model_state = state
            self.emit(
                f"InferenceService {self.isvc}: model {state[0]} (active {state[1] or '-'}, target {state[2] or '-'})"
            )

    def summary(self, status: dict, current: bool, target: _Target) -> str:
        if not current:
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


# --- the API calls ------------------------------------------------------------------------------


class _Api:
    """The InferenceService calls, each retried with backoff on transient errors (5xx, 429, connection)."""

    def __init__(self, custom: client.CustomObjectsApi, request: DeployRequest, retry_delay: float, emit):
        self.custom = custom
        self.request = request
        self.retry_delay = retry_delay
        self.emit = emit
        self.isvc = f"{request.namespace}/{request.name}"

    def get(self, required: bool = False) -> dict | None:
        """The InferenceService, or None if there is none (an error if ``required``)."""
        try:
            return self._call(
                "get",
                self.custom.get_namespaced_custom_object,
                GROUP, VERSION, self.request.namespace, PLURAL, self.request.name,
            )  # fmt: skip
        except ApiException as e:
            if e.status == 404 and _names_object(e, self.request.name) and not required:
                return None
            raise KftuneError(self._error("get", e)) from e

    def create(self, doc: dict) -> dict | None:
        """Create it; None if it exists already."""
        try:
            return self._call(
                "create",
                self.custom.create_namespaced_custom_object,
                GROUP, VERSION, self.request.namespace, PLURAL, doc,
            )  # fmt: skip
        except ApiException as e:
            if e.status == 409:
                return None
            raise KftuneError(self._error("create", e)) from e

    def patch(self, patch: dict) -> dict:
        """Apply a JSON merge patch (the client sends a dict as application/merge-patch+json)."""
        try:
            return self._call(
                "patch",
                self.custom.patch_namespaced_custom_object,
                GROUP, VERSION, self.request.namespace, PLURAL, self.request.name, patch,
            )  # fmt: skip
        except ApiException as e:
            raise KftuneError(self._error("patch", e)) from e

    def _call(self, verb: str, method, *args):
        errors = 0
        while True:
            try:
                return method(*args, _request_timeout=REQUEST_TIMEOUT_SECONDS)
            except (ApiException, HTTPError) as e:
                errors += 1
                if not is_transient(e):
                    raise
                if errors > MAX_API_ERRORS:
                    raise KftuneError(
                        f"cannot {verb} InferenceService {self.isvc}: the Kubernetes API kept failing "
                        f"({errors} attempts): {_api_error(e)}"
                    ) from e
                delay = min(self.retry_delay * 2 ** (errors - 1), MAX_RETRY_DELAY_SECONDS)
                self.emit(
                    f"Kubernetes API error ({_api_error(e)}), retrying in {delay:g} s ({errors}/{MAX_API_ERRORS})"
                )
                time.sleep(delay)

    def _error(self, verb: str, e: ApiException) -> str:
        what = f"cannot {verb} InferenceService {self.isvc}"
        detail = _api_error(e)
        if e.status == 403 and "admission webhook" in detail:
            return f"{what}: rejected by KServe's validating webhook: {detail}"
        if e.status == 403:
            return (
                f"{what}: not allowed (RBAC); the pipeline's service account needs get, create and patch on "
                f"inferenceservices.{GROUP} in namespace {self.request.namespace} (manifests/base/rbac.yaml): {detail}"
            )
        if e.status == 404 and _names_object(e, self.request.namespace, kind="namespaces"):
            return f"{what}: namespace {self.request.namespace!r} not found: {detail}"
        if e.status == 404 and not _names_object(e, self.request.name):
            return (
                f"{what}: KServe is not installed (no inferenceservices.{GROUP} CRD: the API {GROUP}/{VERSION} "
                f"is not served): {detail}"
            )
        if e.status == 404:
            return f"{what}: it is gone (deleted meanwhile?): {detail}"
        if e.status in (400, 422):
            return f"{what}: rejected as invalid: {detail}"
        return f"{what}: {detail}"


def _names_object(e: ApiException, name: str, kind: str | None = None) -> bool:
    """Whether the API's 404 is about the object ``name`` (of ``kind``), not about a missing API."""
    try:
        details = json.loads(e.body).get("details") or {}
    except (TypeError, ValueError, AttributeError):
        return False
    return details.get("name") == name and (kind is None or details.get("kind") == kind)


def _log_line(line: str) -> None:
    log.info("%s", line)
