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
``finish_on_poll``, when the Experiment gets its final condition.
"""

from __future__ import annotations

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
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

TRAINJOBS = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
POD_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
EXPERIMENTS = re.compile(r"^/apis/kubeflow\.org/v1beta1/namespaces/([^/]+)/experiments(?:/([^/]+))?$")
TRIALS = re.compile(r"^/apis/kubeflow\.org/v1beta1/namespaces/([^/]+)/trials$")
KATIB_API = "/apis/kubeflow.org/v1beta1/"
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


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict | None


class FakeKubeApiServer:
    """An in-process fake of the Kubernetes API server; use as a context manager."""

    def __init__(self, scenario: Scenario | None = None, katib: FakeKatibScenario | None = None):
        self.scenario = scenario or Scenario()
        self.katib = katib or FakeKatibScenario()
        self.requests: list[RecordedRequest] = []
        self.jobs: dict[tuple[str, str], dict] = {}
        self.polls: dict[tuple[str, str], int] = {}
        self.experiments: dict[tuple[str, str], dict] = {}
        self.experiment_polls: dict[tuple[str, str], int] = {}
        self.trials: dict[tuple[str, str], list[dict]] = {}
        """The fake Katib controller's Trials of each Experiment, all of them from the start (the
        API shows those that have started by the current poll)."""
        self.trial_lists = 0
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

    def handle(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, object]:
        with self._lock:
            self.requests.append(RecordedRequest(method, path, query, body))
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
            if path.startswith(KATIB_API):
                return self._katib(method, path, query, body)
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
        code, payload = self.server.fake.handle(self.command, url.path, parse_qs(url.query), body)
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
