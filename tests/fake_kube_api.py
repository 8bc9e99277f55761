"""A fake Kubernetes API server for tests: just enough REST for the real ``kubernetes`` client.

No cluster can run in the tests, so :class:`FakeKubeApiServer` serves, over HTTP on 127.0.0.1,
what :mod:`kftune.components.train.trainjob` calls:

    POST/GET        /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs
    GET/DELETE      /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs/{name}
    GET             /api/v1/namespaces/{ns}/pods?labelSelector=...
    GET             /api/v1/namespaces/{ns}/pods/{name}/log

It records every request, and a :class:`Scenario` scripts how a created TrainJob evolves: each
GET of the job is one "poll"; the job's pods (labelled like JobSet's) are Pending before the
first poll, Running until the job finishes on poll ``finish_on_poll`` and then Succeeded or
Failed; node 0's log shows one more line per poll, and all of them once the job has finished.

It also plays a fake Katib controller, for :mod:`kftune.components.tune.katib`:

    POST/GET        /apis/kubeflow.org/v1beta1/namespaces/{ns}/experiments
    GET/DELETE      /apis/kubeflow.org/v1beta1/namespaces/{ns}/experiments/{name}
    GET             /apis/kubeflow.org/v1beta1/namespaces/{ns}/trials?labelSelector=katib.kubeflow.org/experiment=...

A :class:`FakeKatibScenario` scripts a created Experiment the same way, poll by poll: its
``maxTrialCount`` trials get parameter assignments derived from the Experiment's parameters
(grid order for categorical lists, seeded draws for ranges), each is scored by the scenario's
``score`` function of its assignments, and they finish evenly spread over the polls up to
``finish_on_poll``, when the Experiment gets its final condition. Or it serves recorded documents instead
(``statuses``, ``trial_list``: real Katib shapes, tests/fixtures/katib/), so that a test can check what kftune reads
without the fake controller's logic deciding the answer.

And it plays a fake KServe controller (with KServe's validating webhook), for
:mod:`kftune.components.deploy.deploy`:

    POST/GET        /apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices
    GET/PATCH/DELETE /apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}

PATCH takes a JSON merge patch (``application/merge-patch+json``); a change of the spec bumps
``metadata.generation`` and starts a new rollout. A :class:`FakeKServeScenario` scripts each
rollout poll by poll (a poll is one GET of the InferenceService, counted from the last change of
its spec): for the first ``stale_polls`` the status is still the one from before the change (the
controller has not reconciled yet: a previous revision's Ready stays), then the new revision is
in progress, and it is Ready (with ``status.url``) on poll ``ready_on_poll``, or fails with a
condition reason, or a model failure, or never gets ready; or it serves recorded ``statuses`` (real KServe
shapes, tests/fixtures/kserve/) poll by poll. ``status.observedGeneration`` mirrors
the generation of the Knative Service behind it, as KServe's does (``ksvc_generation_offset``
sets it apart from the InferenceService's). Faults: HTTP 500 for the first ``failing_requests``,
403 (RBAC) for some methods, a webhook that denies, KServe not installed.
:meth:`FakeKubeApiServer.add_inference_service` puts in one that exists (and is Ready) already.

For any resource, :meth:`FakeKubeApiServer.fail` answers chosen requests with an HTTP error, before
or after carrying them out (a request that failed, or one whose answer was lost).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

TRAINJOBS = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
POD_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$")
EXPERIMENTS = re.compile(r"^/apis/kubeflow\.org/v1beta1/namespaces/([^/]+)/experiments(?:/([^/]+))?$")
TRIALS = re.compile(r"^/apis/kubeflow\.org/v1beta1/namespaces/([^/]+)/trials$")
KATIB_API = "/apis/kubeflow.org/v1beta1/"
INFERENCESERVICES = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/]+))?$")
KSERVE_API = "/apis/serving.kserve.io/"
KSERVE_WEBHOOK = "inferenceservice.kserve-webhook-server.validator"
# Predictor fields that each name the model one way: KServe's webhook wants exactly one.
PREDICTOR_IMPLEMENTATIONS = (
    "model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "pmml", "lightgbm", "paddle",
    "huggingface",
)  # fmt: skip
EXPERIMENT_LABEL = "katib.kubeflow.org/experiment"
TIMESTAMP = "2026-01-01T00:00:00Z"


@dataclass
class Scenario:
    """How a created TrainJob evolves, poll by poll (a poll is one GET of the job)."""

    outcome: str | None = "Complete"
    """The condition the job ends with, ``Complete`` or ``Failed``; None: it never finishes."""
    finish_on_poll: int = 3
    reason: str = "JobSetCompleted"
    message: str = "jobset completed"
    node0_log: list[str] = field(default_factory=lambda: ["rank 0 starting", "epoch 1 done", "model written"])
    other_nodes_log: list[str] = field(default_factory=lambda: ["a worker on another node"])
    failing_polls: set[int] = field(default_factory=set)
    """Polls answered with HTTP 500."""
    create_error: int | None = None
    """Answer the create with this HTTP status instead of creating the job."""
    on_finish: Callable[[dict], None] | None = None
    """Called once with the TrainJob's body when it finishes (e.g. to write what rank 0 would)."""


@dataclass
class FakeKatibScenario:
    """How the fake Katib controller runs a created Experiment, poll by poll (a poll is one GET of it)."""

    outcome: str | None = "Succeeded"
    """The Experiment's final condition, ``Succeeded`` or ``Failed``; None: it never finishes."""
    finish_on_poll: int = 3
    reason: str = "ExperimentMaxTrialsReached"
    message: str = "Experiment has succeeded because max trial count has reached"
    score: Callable[[dict[str, str]], float | None] = lambda assignments: 0.5
    """The objective value a trial reports, from its parameter assignments (name -> string, as
    Katib passes them); None: the trial fails. Additional metrics report the same value."""
    seed: int = 0
    """Seed of the draws for range parameters."""
    failing_polls: set[int] = field(default_factory=set)
    """Polls answered with HTTP 500."""
    failing_trial_lists: int = 0
    """The first this many trial listings are answered with HTTP 500."""
    create_error: int | None = None
    """Answer the create with this HTTP status instead of creating the Experiment."""
    crd_missing: bool = False
    """Katib is not installed: every kubeflow.org/v1beta1 request gets a 404."""
    statuses: list[dict] | None = None
    """Recorded Experiment ``status`` documents, served verbatim in place of the fake controller's: the n-th GET of
    the Experiment gets the n-th, the last one from then on."""
    trial_list: dict | None = None
    """A recorded TrialList, whose items (those the label selector matches) the trial listing serves in place of
    the fake controller's Trials."""


@dataclass
class FakeKServeScenario:
    """How the fake KServe controller rolls out an InferenceService after each change of its spec, poll by
    poll (a poll is one GET of it, counted from the change)."""

    ready_on_poll: int | None = 3
    """The poll on which the new revision is Ready; None: never."""
    stale_polls: int = 1
    """The first this many polls still show the status from before the change (not reconciled yet)."""
    failure: tuple[str, str] | None = None
    """``(reason, message)``: from poll ``fail_on_poll`` on, PredictorReady, PredictorConfigurationReady and
    Ready are False with them (until ``failure_clears_on_poll``, if set; else the rollout never gets ready)."""
    fail_on_poll: int = 2
    failure_clears_on_poll: int | None = None
    model_failure: tuple[str, str, str] | None = None
    """``(transitionStatus, reason, message)`` of ``modelStatus`` from poll ``fail_on_poll`` on, e.g.
    ``("BlockedByFailedLoad", "ModelLoadFailed", ...)``; with ``InvalidSpec`` (the runtime cannot be used) the
    controller does not get as far as the Knative Service: the rest of the status stays as before."""
    url_template: str = "http://{name}.{namespace}.example.com"
    address_only: bool = False
    """The Ready status has ``status.address.url`` (cluster-local) but no ``status.url``."""
    ksvc_generation_offset: int = 0
    """The Knative Service's generation minus the InferenceService's, mirrored in status.observedGeneration."""
    failing_requests: int = 0
    """The first this many requests to inferenceservices are answered with HTTP 500."""
    forbidden: frozenset[str] = frozenset()
    """HTTP methods on inferenceservices that RBAC does not allow (answered 403)."""
    webhook_denial: str | None = None
    """KServe's validating webhook denies every create and update with this message (HTTP 403, as it does)."""
    crd_missing: bool = False
    """KServe is not installed: every serving.kserve.io request gets a 404."""
    statuses: list[dict] | None = None
    """Recorded ``status`` documents, served verbatim in place of the fake controller's after each change of the
    spec: the n-th poll gets the n-th, the last one from then on."""


@dataclass
class FakeInferenceService:
    """The fake controller's record of one InferenceService."""

    isvc: dict
    """The object as served (its status as of the latest poll)."""
    ksvc_generation: int
    revision: int = 1
    """Number of the predictor's latest created revision."""
    polls: int = 0
    """GETs since the last change of the spec."""
    before: dict = field(default_factory=dict)
    """The status at the last change of the spec."""
    previous_revision: str | None = None
    """The latest ready revision at the last change of the spec."""
    settled: bool = False
    """Rolled out before the test began (:meth:`FakeKubeApiServer.add_inference_service`): no rollout
    under way until its spec changes."""


@dataclass
class Fault:
    """Requests the fake answers with an error (:meth:`FakeKubeApiServer.fail`)."""

    method: str
    path_part: str
    status: int
    times: int
    after: bool
    """Carry the request out, then answer with the error: the answer is lost, not the request."""


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict | None
    content_type: str | None = None


class FakeKubeApiServer:
    """An in-process fake of the Kubernetes API server; use as a context manager."""

    def __init__(
        self,
        scenario: Scenario | None = None,
        katib: FakeKatibScenario | None = None,
        kserve: FakeKServeScenario | None = None,
    ):
        self.scenario = scenario or Scenario()
        self.katib = katib or FakeKatibScenario()
        self.kserve = kserve or FakeKServeScenario()
        self.inference_services: dict[tuple[str, str], FakeInferenceService] = {}
        self.kserve_requests = 0
        self.requests: list[RecordedRequest] = []
        self.faults: list[Fault] = []
        self.jobs: dict[tuple[str, str], dict] = {}
        self.polls: dict[tuple[str, str], int] = {}
        self.experiments: dict[tuple[str, str], dict] = {}
        self.experiment_polls: dict[tuple[str, str], int] = {}
        self.trials: dict[tuple[str, str], list[dict]] = {}
        """The fake Katib controller's Trials of each Experiment, all of them from the start (the
        API shows those that have started by the current poll)."""
        self.trial_lists = 0
        self.named_pods: dict[tuple[str, str], dict] = {}
        """Pods a test puts here (namespace, name): what a GET of one answers (a KFP step's own pod)."""
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def api_client(self) -> client.ApiClient:
        """A real Kubernetes API client talking to this server."""
        return client.ApiClient(client.Configuration(host=self.url))

    def __enter__(self) -> FakeKubeApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def calls(self, method: str, path_part: str = "") -> list[RecordedRequest]:
        """The recorded requests with this method whose path contains ``path_part``."""
        return [r for r in self.requests if r.method == method and path_part in r.path]

    # --- the API ------------------------------------------------------------------------

    def fail(self, method: str, path_part: str = "", *, status: int = 500, times: int = 1, after: bool = False) -> None:
        """Answer the next ``times`` requests with ``method`` whose path contains ``path_part`` with HTTP
        ``status``; with ``after``, carry each out first and lose only its answer (as when the connection
        drops on the way back)."""
        with self._lock:
            self.faults.append(Fault(method, path_part, status, times, after))

    def handle(
        self, method: str, path: str, query: dict, body: dict | None, content_type: str | None = None
    ) -> tuple[int, object]:
        with self._lock:
            self.requests.append(RecordedRequest(method, path, query, body, content_type))
            fault = next((f for f in self.faults if f.times and f.method == method and f.path_part in path), None)
            if fault is None:
                return self._serve(method, path, query, body, content_type)
            fault.times -= 1
            if fault.after:
                self._serve(method, path, query, body, content_type)
            return _status(fault.status, "InternalError" if fault.status >= 500 else "Fault", "the fake's fault")

    def _serve(
        self, method: str, path: str, query: dict, body: dict | None, content_type: str | None = None
    ) -> tuple[int, object]:
        if match := TRAINJOBS.match(path):
            namespace, name = match.groups()
            if name is None and method == "POST":
                return self._create(namespace, body)
            if name is None and method == "GET":
                items = [job for (ns, _), job in self.jobs.items() if ns == namespace]
                return 200, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJobList", "items": items}
            if method == "GET":
                return self._poll(namespace, name)
            if method == "DELETE":
                if self.jobs.pop((namespace, name), None) is None:
                    return _status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found')
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        if (match := PODS.match(path)) and method == "GET":
            selector = query.get("labelSelector", [""])[0]
            pods = [
                pod for pod in self._pods(match.group(1)) if selector_matches(selector, pod["metadata"]["labels"])
            ]
            return 200, {"apiVersion": "v1", "kind": "PodList", "items": pods}
        if (match := POD_LOG.match(path)) and method == "GET":
            return self._log(*match.groups())
        if (match := POD.match(path)) and method == "GET":
            if match.groups() not in self.named_pods:
                return _status(404, "NotFound", f'pods "{match.group(2)}" not found')
            return 200, self.named_pods[match.groups()]
        if path.startswith(KATIB_API):
            return self._katib(method, path, query, body)
        if path.startswith(KSERVE_API):
            return self._kserve(method, path, body, content_type)
        return _status(404, "NotFound", f"the server could not find the requested resource ({method} {path})")

    def _create(self, namespace: str, body: dict) -> tuple[int, object]:
        if self.scenario.create_error:
            return _status(self.scenario.create_error, "Forbidden", "trainjobs is forbidden: the fake says no")
        name = body["metadata"]["name"]
        if (namespace, name) in self.jobs:
            return _status(409, "AlreadyExists", f'trainjobs.trainer.kubeflow.org "{name}" already exists')
        job = json.loads(json.dumps(body))
        job["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=TIMESTAMP)
        job["status"] = {}
        self.jobs[(namespace, name)] = job
        self.polls[(namespace, name)] = 0
        return 201, job

    def _poll(self, namespace: str, name: str) -> tuple[int, object]:
        job = self.jobs.get((namespace, name))
        if job is None:
            return _status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found')
        self.polls[(namespace, name)] += 1
        poll = self.polls[(namespace, name)]
        if poll in self.scenario.failing_polls:
            return _status(500, "InternalError", "etcdserver: request timed out")
        if self._finished(namespace, name) and not job["status"].get("conditions"):
            condition = {
                "type": self.scenario.outcome,
                "status": "True",
                "reason": self.scenario.reason,
                "message": self.scenario.message,
                "lastTransitionTime": TIMESTAMP,
            }
            job["status"]["conditions"] = [condition]
            if self.scenario.on_finish:
                self.scenario.on_finish(job)
        return 200, job

    def _finished(self, namespace: str, name: str) -> bool:
        return self.scenario.outcome is not None and self.polls[(namespace, name)] >= self.scenario.finish_on_poll

    def _phase(self, namespace: str, name: str) -> str:
        if self.polls[(namespace, name)] == 0:
            return "Pending"
        if self._finished(namespace, name):
            return "Succeeded" if self.scenario.outcome == "Complete" else "Failed"
        return "Running"

    def _pods(self, namespace: str) -> list[dict]:
        pods = []
        for (ns, name), job in self.jobs.items():
            if ns != namespace:
                continue
            for index in range(job["spec"]["trainer"].get("numNodes", 1)):
                labels = {
                    "jobset.sigs.k8s.io/jobset-name": name,
                    "jobset.sigs.k8s.io/replicatedjob-name": "node",
                    "batch.kubernetes.io/job-completion-index": str(index),
                }
                pods.append(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "name": f"{name}-node-0-{index}-x7k2p",
                            "namespace": namespace,
                            "labels": labels,
                            "creationTimestamp": TIMESTAMP,
                        },
                        "spec": {"containers": [{"name": "node", "image": job["spec"]["trainer"]["image"]}]},
                        "status": {"phase": self._phase(ns, name)},
                    }
                )
        return pods

    def _log(self, namespace: str, pod_name: str) -> tuple[int, object]:
        for (ns, name), _ in self.jobs.items():
            if ns == namespace and pod_name.startswith(f"{name}-node-0-"):
                if self._phase(ns, name) == "Pending":
                    return _status(400, "BadRequest", f'container "node" in pod "{pod_name}" is waiting to start')
                if not pod_name.startswith(f"{name}-node-0-0-"):
                    return 200, "".join(line + "\n" for line in self.scenario.other_nodes_log)
                lines = self.scenario.node0_log
                if not self._finished(ns, name):
                    lines = lines[: self.polls[(ns, name)]]
                return 200, "".join(line + "\n" for line in lines)
        return _status(404, "NotFound", f'pods "{pod_name}" not found')

    # --- the fake Katib controller -------------------------------------------------------

    def _katib(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, object]:
        if self.katib.crd_missing:
            return _status(404, "NotFound", "the server could not find the requested resource")
        if match := EXPERIMENTS.match(path):
            namespace, name = match.groups()
            if name is None and method == "POST":
                return self._create_experiment(namespace, body)
            if name is None and method == "GET":
                items = [e for (ns, _), e in self.experiments.items() if ns == namespace]
                return 200, {"apiVersion": "kubeflow.org/v1beta1", "kind": "ExperimentList", "items": items}
            if method == "GET":
                return self._poll_experiment(namespace, name)
            if method == "DELETE":
                if self.experiments.pop((namespace, name), None) is None:
                    return _status(404, "NotFound", f'experiments.kubeflow.org "{name}" not found')
                self.trials.pop((namespace, name), None)  # the garbage collector's part
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        if (match := TRIALS.match(path)) and method == "GET":
            self.trial_lists += 1
            if self.trial_lists <= self.katib.failing_trial_lists:
                return _status(500, "InternalError", "etcdserver: leader changed")
            selector = query.get("labelSelector", [""])[0]
            if self.katib.trial_list is not None:
                items = [
                    trial
                    for trial in self.katib.trial_list["items"]
                    if trial["metadata"]["namespace"] == match.group(1)
                    and selector_matches(selector, trial["metadata"]["labels"])
                ]
                return 200, {**self.katib.trial_list, "items": items}
            items = [
                trial
                for (ns, name), trials in self.trials.items()
                if ns == match.group(1)
                for trial in trials[: self._started_trials(ns, name)]
                if selector_matches(selector, trial["metadata"]["labels"])
            ]
            items = [{k: v for k, v in trial.items() if k != "_final"} for trial in items]  # the fake's own notes
            return 200, {"apiVersion": "kubeflow.org/v1beta1", "kind": "TrialList", "items": items}
        return _status(404, "NotFound", f"the server could not find the requested resource ({method} {path})")

    def _create_experiment(self, namespace: str, body: dict) -> tuple[int, object]:
        if code := self.katib.create_error:
            reason, message = {
                403: (
                    "Forbidden",
                    'experiments.kubeflow.org is forbidden: User "system:serviceaccount:x:y" '
                    'cannot create resource "experiments" (the fake says no)',
                ),
                409: ("AlreadyExists", f'experiments.kubeflow.org "{body["metadata"]["name"]}" already exists'),
                400: (
                    "BadRequest",
                    'admission webhook "validator.experiment.katib.kubeflow.org" denied the '
                    "request: spec.parallelTrialCount: Invalid value (the fake says no)",
                ),
            }.get(code, ("InternalError", "the fake says no"))
            return _status(code, reason, message)
        name = body["metadata"]["name"]
        if (namespace, name) in self.experiments:
            return _status(409, "AlreadyExists", f'experiments.kubeflow.org "{name}" already exists')
        experiment = json.loads(json.dumps(body))
        experiment["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=TIMESTAMP)
        experiment["status"] = {
            "conditions": [_condition("Created", "True", "ExperimentCreated", "Experiment is created")]
        }
        self.experiments[(namespace, name)] = experiment
        self.experiment_polls[(namespace, name)] = 0
        self.trials[(namespace, name)] = self._plan_trials(experiment)
        return 201, experiment

    def _plan_trials(self, experiment: dict) -> list[dict]:
        """The Trials the fake controller will run: assignments, outcome and metrics of each."""
        spec = experiment["spec"]
        name = experiment["metadata"]["name"]
        count = spec.get("maxTrialCount", 1)
        rng = random.Random(self.katib.seed)
        parameters = spec["parameters"]
        if all(p["parameterType"] == "categorical" for p in parameters):  # grid order, like Katib's grid
            grid = list(itertools.product(*(p["feasibleSpace"]["list"] for p in parameters)))
            names = [p["name"] for p in parameters]
            rows = [dict(zip(names, grid[i % len(grid)], strict=True)) for i in range(count)]
        else:
            rows = [{p["name"]: _draw(p, rng) for p in parameters} for _ in range(count)]
        objective = spec["objective"]
        metric_names = [objective["objectiveMetricName"], *objective.get("additionalMetricNames", [])]
        trials = []
        for index, assignments in enumerate(rows):
            score = self.katib.score(dict(assignments))
            trial_name = f"{name}-{index:03d}fake"
            if score is None:
                condition = _condition(
                    "Failed",
                    "True",
                    "TrialFailed",
                    "Trial has failed. Job message: Job has reached the specified backoff limit",
                )
                observation = None
            else:
                condition = _condition("Succeeded", "True", "TrialSucceeded", "Trial has succeeded")
                value = repr(float(score))
                observation = {
                    "metrics": [{"name": m, "latest": value, "min": value, "max": value} for m in metric_names]
                }
            trials.append({
                "apiVersion": "kubeflow.org/v1beta1",
                "kind": "Trial",
                "metadata": {"name": trial_name, "namespace": experiment["metadata"]["namespace"],
                             "labels": {EXPERIMENT_LABEL: name}, "creationTimestamp": TIMESTAMP},
                "spec": {
                    "objective": objective,
                    "parameterAssignments": [{"name": k, "value": v} for k, v in assignments.items()],
                    "primaryContainerName": spec["trialTemplate"]["primaryContainerName"],
                },
                "status": {"conditions": [_condition("Running", "True", "TrialRunning", "Trial is running")]},
                "_final": {"condition": condition, "observation": observation, "score": score},  # not served
            })  # fmt: skip
        return trials

    def _finished_trials(self, namespace: str, name: str) -> int:
        """Trials finished by the current poll: evenly spread until ``finish_on_poll``."""
        total = len(self.trials.get((namespace, name), []))
        poll = self.experiment_polls[(namespace, name)]
        if self.katib.outcome is None:  # trials keep finishing, but never the last one
            return min(max(total - 1, 0), poll // 2)
        return min(total, total * poll // max(1, self.katib.finish_on_poll))

    def _started_trials(self, namespace: str, name: str) -> int:
        parallel = self.experiments[(namespace, name)]["spec"].get("parallelTrialCount", 1)
        total = len(self.trials[(namespace, name)])
        if self.experiment_polls[(namespace, name)] == 0:
            return 0
        return min(total, self._finished_trials(namespace, name) + parallel)

    def _poll_experiment(self, namespace: str, name: str) -> tuple[int, object]:
        experiment = self.experiments.get((namespace, name))
        if experiment is None:
            return _status(404, "NotFound", f'experiments.kubeflow.org "{name}" not found')
        self.experiment_polls[(namespace, name)] += 1
        poll = self.experiment_polls[(namespace, name)]
        if poll in self.katib.failing_polls:
            return _status(500, "InternalError", "etcdserver: request timed out")
        if self.katib.statuses is not None:
            experiment["status"] = copy.deepcopy(self.katib.statuses[min(poll, len(self.katib.statuses)) - 1])
            return 200, experiment
        trials = self.trials[(namespace, name)]
        finished = self._finished_trials(namespace, name)
        started = self._started_trials(namespace, name)
        for trial in trials[:finished]:
            final = trial["_final"]
            trial["status"]["conditions"] = [final["condition"]]
            if final["observation"]:
                trial["status"]["observation"] = final["observation"]
        done = [t for t in trials[:finished] if t["_final"]["score"] is not None]
        status = experiment["status"]
        status.update(
            trials=started,
            trialsSucceeded=len(done),
            trialsFailed=finished - len(done),
            trialsRunning=started - finished,
            succeededTrialList=[t["metadata"]["name"] for t in done],
            failedTrialList=[t["metadata"]["name"] for t in trials[:finished] if t["_final"]["score"] is None],
            runningTrialList=[t["metadata"]["name"] for t in trials[finished:started]],
        )
        if done:
            maximize = experiment["spec"]["objective"]["type"] == "maximize"
            best = (max if maximize else min)(done, key=lambda t: t["_final"]["score"])
            status["currentOptimalTrial"] = {
                "bestTrialName": best["metadata"]["name"],
                "parameterAssignments": best["spec"]["parameterAssignments"],
                "observation": best["_final"]["observation"],
            }
        conditions = status["conditions"]
        if not any(c["type"] == "Running" for c in conditions):
            conditions.append(_condition("Running", "True", "ExperimentRunning", "Experiment is running"))
        finished_now = self.katib.outcome is not None and poll >= self.katib.finish_on_poll
        if finished_now and not any(c["type"] == self.katib.outcome for c in conditions):
            for condition in conditions:
                if condition["type"] == "Running":
                    condition["status"] = "False"
            conditions.append(_condition(self.katib.outcome, "True", self.katib.reason, self.katib.message))
            status["completionTime"] = TIMESTAMP
        return 200, experiment

    # --- the fake KServe controller ------------------------------------------------------

    def add_inference_service(self, body: dict, *, generation: int = 1, status: dict | None = None) -> dict:
        """Store ``body`` as an InferenceService created earlier and rolled out: revision 1 Ready (or ``status``, a
        recorded one)."""
        with self._lock:
            isvc = json.loads(json.dumps(body))
            metadata = isvc["metadata"]
            metadata.update(uid=str(uuid.uuid4()), creationTimestamp=TIMESTAMP, generation=generation)
            metadata["resourceVersion"] = str(generation)
            record = FakeInferenceService(
                isvc, ksvc_generation=max(1, generation + self.kserve.ksvc_generation_offset), settled=True
            )
            isvc["status"] = copy.deepcopy(status) if status is not None else self._rollout_status(record, "ready")
            self.inference_services[(metadata["namespace"], metadata["name"])] = record
            return json.loads(json.dumps(isvc))

    def _kserve(self, method: str, path: str, body: dict | None, content_type: str | None) -> tuple[int, object]:
        scenario = self.kserve
        match = INFERENCESERVICES.match(path)
        if scenario.crd_missing or not match:
            return _status(404, "NotFound", "the server could not find the requested resource")
        namespace, name = match.groups()
        if method in scenario.forbidden:
            verb = {"GET": "get" if name else "list", "POST": "create", "PATCH": "patch", "DELETE": "delete"}[method]
            return _status(
                403,
                "Forbidden",
                f'inferenceservices.serving.kserve.io "{name or ""}" is forbidden: User '
                f'"system:serviceaccount:{namespace}:default-editor" cannot {verb} resource "inferenceservices" '
                f'in API group "serving.kserve.io" in the namespace "{namespace}"',
            )
        self.kserve_requests += 1
        if self.kserve_requests <= scenario.failing_requests:
            return _status(500, "InternalError", "etcdserver: leader changed")
        if name is None and method == "POST":
            return self._create_isvc(namespace, body)
        if name is None and method == "GET":
            items = [r.isvc for (ns, _), r in self.inference_services.items() if ns == namespace]
            return 200, {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceServiceList", "items": items}
        record = self.inference_services.get((namespace, name))
        if name is None or record is None:
            return _isvc_not_found(name) if name else _status(405, "MethodNotAllowed", f"{method} {path}")
        if method == "GET":
            return self._poll_isvc(record)
        if method == "PATCH":
            return self._patch_isvc(record, body, content_type)
        if method == "DELETE":
            del self.inference_services[(namespace, name)]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        return _status(405, "MethodNotAllowed", f"{method} {path}")

    def _create_isvc(self, namespace: str, body: dict) -> tuple[int, object]:
        name = body["metadata"]["name"]
        if (namespace, name) in self.inference_services:
            return _status(409, "AlreadyExists", f'inferenceservices.serving.kserve.io "{name}" already exists')
        if denial := self._webhook(body):
            return denial
        isvc = json.loads(json.dumps(body))
        isvc["metadata"].update(
            namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=TIMESTAMP, generation=1, resourceVersion="1"
        )
        isvc["status"] = {}
        record = FakeInferenceService(isvc, ksvc_generation=max(1, 1 + self.kserve.ksvc_generation_offset))
        self.inference_services[(namespace, name)] = record
        return 201, isvc

    def _patch_isvc(self, record: FakeInferenceService, patch: dict, content_type: str | None) -> tuple[int, object]:
        if content_type != "application/merge-patch+json":
            return _status(415, "UnsupportedMediaType", f"the fake takes JSON merge patches, not {content_type}")
        isvc = record.isvc
        patched = merge_patch({"metadata": isvc["metadata"], "spec": isvc["spec"]}, patch)  # status: a subresource
        if denial := self._webhook(patched):
            return denial
        if patched == {"metadata": isvc["metadata"], "spec": isvc["spec"]}:
            return 200, isvc
        metadata = patched["metadata"]
        metadata["resourceVersion"] = str(int(metadata["resourceVersion"]) + 1)
        if patched["spec"] != isvc["spec"]:
            metadata["generation"] += 1
            record.ksvc_generation += 1

            def template(spec: dict) -> dict:  # what a Knative revision is made of: not the traffic split
                return {k: v for k, v in spec["predictor"].items() if k != "canaryTrafficPercent"}

            predictor = (isvc["status"].get("components") or {}).get("predictor") or {}
            record.previous_revision = predictor.get("latestReadyRevision")
            if template(patched["spec"]) != template(isvc["spec"]):
                record.revision += 1
            record.before = copy.deepcopy(isvc["status"])
            record.polls = 0
            record.settled = False
        isvc.update(metadata=metadata, spec=patched["spec"])
        return 200, isvc

    def _webhook(self, isvc: dict) -> tuple[int, dict] | None:
        """KServe's validating webhook, in part; controller-runtime answers a denial with HTTP 403."""
        predictor = (isvc.get("spec") or {}).get("predictor") or {}
        implementations = [key for key in PREDICTOR_IMPLEMENTATIONS if predictor.get(key) is not None]
        reason = self.kserve.webhook_denial
        if reason is None and len(implementations) != 1:
            reason = f"exactly one predictor implementation must be specified, got {implementations}"
        canary = predictor.get("canaryTrafficPercent")
        if reason is None and canary is not None and not 0 <= canary <= 100:
            reason = "'CanaryTrafficPercent' must be between 0 and 100"
        if reason is None:
            return None
        return _status(403, "Forbidden", f'admission webhook "{KSERVE_WEBHOOK}" denied the request: {reason}')

    def _poll_isvc(self, record: FakeInferenceService) -> tuple[int, object]:
        scenario = self.kserve
        if record.settled:
            return 200, record.isvc
        record.polls += 1
        poll = record.polls
        if scenario.statuses is not None:
            record.isvc["status"] = copy.deepcopy(scenario.statuses[min(poll, len(scenario.statuses)) - 1])
            return 200, record.isvc
        failing = (
            scenario.failure is not None
            and poll >= scenario.fail_on_poll
            and (scenario.failure_clears_on_poll is None or poll < scenario.failure_clears_on_poll)
        )
        never_ready = scenario.ready_on_poll is None or (
            scenario.failure is not None and scenario.failure_clears_on_poll is None
        )
        if poll <= scenario.stale_polls:
            status = copy.deepcopy(record.before)
        elif failing:
            status = self._rollout_status(record, "failing")
        elif not never_ready and poll >= scenario.ready_on_poll:
            status = self._rollout_status(record, "ready")
        else:
            status = self._rollout_status(record, "progressing")
        if scenario.model_failure and poll >= scenario.fail_on_poll:
            transition, reason, message = scenario.model_failure
            if transition == "InvalidSpec":  # the controller stops before the Knative Service: nothing else moves
                status = copy.deepcopy(record.before)
            states = (status.get("modelStatus") or {}).get("states") or {}
            status["modelStatus"] = {
                "transitionStatus": transition,
                "states": {"activeModelState": states.get("activeModelState", ""), "targetModelState": "FailedToLoad"},
                "lastFailureInfo": {"reason": reason, "message": message, "exitCode": 1},
            }
        record.isvc["status"] = status
        return 200, record.isvc

    def _rollout_status(self, record: FakeInferenceService, phase: str) -> dict:
        """The status of the latest revision: ``ready``, ``failing`` or ``progressing``."""
        scenario = self.kserve
        metadata, spec = record.isvc["metadata"], record.isvc["spec"]
        name, namespace = metadata["name"], metadata["namespace"]
        revision = f"{name}-predictor-{record.revision:05d}"
        previous = record.previous_revision
        status = copy.deepcopy(record.before)
        status["observedGeneration"] = record.ksvc_generation
        predictor = status.setdefault("components", {}).setdefault("predictor", {})
        predictor["latestCreatedRevision"] = revision
        served = "True" if previous else "Unknown"  # the route keeps serving the previous revision
        ingress = (
            _condition("IngressReady", "True", "", "")
            if previous
            else _condition("IngressReady", "False", "Predictor ingress not created", "")
        )
        if phase == "ready":
            kinds = ("IngressReady", "PredictorConfigurationReady", "PredictorReady", "PredictorRouteReady", "Ready")
            conditions = [_condition(kind, "True", "", "") for kind in kinds]
            url = scenario.url_template.format(name=name, namespace=namespace)
            predictor.update(latestReadyRevision=revision, url=url)
            canary = spec["predictor"].get("canaryTrafficPercent")
            if canary is not None and previous and previous != revision:
                predictor["traffic"] = [
                    {"revisionName": revision, "percent": canary, "latestRevision": True, "tag": "latest"},
                    {"revisionName": previous, "percent": 100 - canary, "latestRevision": False, "tag": "prev"},
                ]
            else:
                predictor["traffic"] = [{"revisionName": revision, "percent": 100, "latestRevision": True}]
            status["address"] = {"url": f"http://{name}-predictor.{namespace}.svc.cluster.local"}
            status.pop("url", None)
            if not scenario.address_only:
                status["url"] = url
            status["modelStatus"] = {
                "transitionStatus": "UpToDate",
                "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
                "copies": {"failedCopies": 0, "totalCopies": 1},
            }
        elif phase == "failing":
            reason, message = scenario.failure
            conditions = [
                ingress,
                _condition("PredictorConfigurationReady", "False", reason, message),
                _condition("PredictorReady", "False", reason, message),
                _condition("PredictorRouteReady", served, "", ""),
                _condition("Ready", "False", reason, message),
            ]
        else:
            waiting = f'Configuration "{name}-predictor" is waiting for a Revision to become ready.'
            conditions = [
                ingress,
                _condition("PredictorConfigurationReady", "Unknown", "RevisionMissing", waiting),
                _condition("PredictorReady", "Unknown", "RevisionMissing", waiting),
                _condition("PredictorRouteReady", served, "", ""),
                _condition("Ready", "Unknown", "RevisionMissing", waiting),
            ]
            active = ((status.get("modelStatus") or {}).get("states") or {}).get("activeModelState", "")
            status["modelStatus"] = {
                "transitionStatus": "InProgress",
                "states": {"activeModelState": active, "targetModelState": "Loading"},
            }
        status["conditions"] = conditions
        return status


def merge_patch(target: object, patch: object) -> object:
    """``patch`` applied to ``target`` as a JSON merge patch (RFC 7386): null removes, objects merge."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _isvc_not_found(name: str) -> tuple[int, dict]:
    code, body = _status(404, "NotFound", f'inferenceservices.serving.kserve.io "{name}" not found')
    body["details"] = {"name": name, "group": "serving.kserve.io", "kind": "inferenceservices"}
    return code, body


def _condition(kind: str, status: str, reason: str, message: str) -> dict:
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": TIMESTAMP, "lastUpdateTime": TIMESTAMP}  # fmt: skip


def _draw(parameter: dict, rng: random.Random) -> str:
    """A value for a Katib parameter, as the suggestion services format it (a string)."""
    space = parameter["feasibleSpace"]
    if parameter["parameterType"] == "categorical":
        return rng.choice(space["list"])
    low, high = float(space["min"]), float(space["max"])
    if space.get("distribution") == "logUniform":
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        value = rng.uniform(low, high)
    if parameter["parameterType"] == "int":
        return str(int(round(value)))
    return repr(value)


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Whether ``labels`` match a label selector of ``k=v``, ``k!=v`` and ``k in (a, b)`` terms."""
    for term in re.split(r",(?![^(]*\))", selector):
        term = term.strip()
        if not term:
            continue
        if match := re.fullmatch(r"(\S+)\s+in\s+\((.*)\)", term):
            if labels.get(match[1]) not in {value.strip() for value in match[2].split(",")}:
                return False
        elif match := re.fullmatch(r"([^!=\s]+)\s*(!=|==|=)\s*(\S*)", term):
            equal = labels.get(match[1]) == match[3]
            if equal != (match[2] != "!="):
                return False
        else:
            raise ValueError(f"label selector term not understood by the fake: {term!r}")
    return True


def _status(code: int, reason: str, message: str) -> tuple[int, dict]:
    return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message}


class _Handler(BaseHTTPRequestHandler):
    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip() or None
        code, payload = self.server.fake.handle(self.command, url.path, parse_qs(url.query), body, content_type)
        if isinstance(payload, str):
            data, content_type = payload.encode(), "text/plain"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass


def write_kubeconfig(path, server: FakeKubeApiServer):
    """A kubeconfig at ``path`` whose one context talks to ``server``; returns ``path``."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        "users": [{"name": "fake", "user": {}}],
    }))  # fmt: skip
    return path


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def recorded(name: str) -> dict:
    """A document as a real controller writes it (tests/fixtures/``name``; see tests/fixtures/README.md)."""
    return json.loads((FIXTURES / name).read_text())
