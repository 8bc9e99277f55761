"""Hyperparameter search at cluster scale: run the trials as a Katib ``Experiment``.

The launcher puts the preprocessed dataset and the base training config on a shared volume
(a ReadWriteMany PVC mounted in its own pod and in every trial), creates a Katib Experiment
whose trials are ``batch/v1`` Jobs running the train image, follows the Experiment until it
finishes, deletes it, and returns the best parameters with a summary of every trial.

Each trial runs ``python -m kftune.components.tune.trial`` (torchrun, like the train
component), with the searched options as ``--set NAME=VALUE`` and its output under
``<run_dir>/trials/<trial name>`` (checkpoints beside it, so no two trials share any). When it
is done it prints the best epoch's validation scores, ``val_<metric>=...`` for each of the task's
(``val_f1_macro``, ``val_accuracy``, ``val_loss`` for classification; ``val_rmse`` ... for
regression), on stdout: Katib's ``StdOut`` metrics collector (injected into the trial pods
by Katib's webhook, in namespaces labelled ``katib.kubeflow.org/metrics-collector-injection:
enabled`` as Kubeflow profiles are) reads them, with the ``latest`` strategy for every metric.

    run_dir/                     on the shared volume, one per Experiment
        train_config.json        the base TrainConfig; each trial overrides the searched options
        dataset/                 copy of the preprocessed dataset artifact (train and validation only)
        pretrained/              copy of a local pretrained model (if it is not on the volume)
        trials/<trial>/          a trial's model (and <trial>.checkpoints/)

The Experiment is built from Katib's own API models (``kubeflow_katib_api``, the models the
Kubeflow SDK's optimizer sends); the trial's Job is a plain document around the training pod
of :mod:`~kftune.cluster.pod_spec` (as a TrainJob's nodes run it), its pod template
checked against Katib's copy of the core models. Some Katib facts the spec follows:

* Katib's StdOut collector rewrites the container's command into one ``sh -c`` line, its
  arguments joined with spaces and not quoted, so every argument must be shell-safe: paths
  and names are checked for that, and the searched values are numbers.
* Grid search (Katib's Optuna service) needs finitely many values and at most as many trials
  as combinations: every parameter becomes a ``categorical`` list of its grid values.
* Bayesian optimisation (Katib's scikit-optimize service) samples *every* ``double`` range
  log-uniformly, which is wrong for a linear range and impossible from 0 (``warmup_ratio``):
  a linear float range is given to it as the categorical list of its grid values.
* ``random_state`` (the seed) is read by the hyperopt (random, tpe) and skopt services.
* A trial's name reaches its command through a trial parameter referencing ``${trialSpec.Name}``.
* The trial pods are labelled ``sidecar.istio.io/inject: "false"``: in Kubeflow namespaces
  with Istio injection a Job's pod would otherwise never finish (the proxy keeps running).

Whatever happens (success, failure, timeout, SIGTERM, KeyboardInterrupt) an Experiment that was
created is deleted, and with it its Trials and their Jobs.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from kubeflow.optimizer.constants import constants as katib_constants
from kubeflow_katib_api import models
from kubernetes import client
from kubernetes.client.rest import ApiException

from kftune.cluster.kube import (
    api_error,
    check_name,
    check_namespace,
    current_namespace,
    is_dns_subdomain,
    new_job_name,
)
from kftune.cluster.lifecycle import (
    Cleanup,
    ClusterResource,
    Finished,
    Outcome,
    ResourceApi,
    emitter,
    holding_condition,
    run_resource,
)
from kftune.cluster.pod_spec import check_training_pod, resource_quantities, training_pod_spec
from kftune.cluster.resources import SHM_SIZE, TrainResources
from kftune.components.tune.config import Algorithm, Direction, SearchConfig
from kftune.errors import ConfigError, KftuneError
from kftune.settings.fields import check_settings, choices_of, same_as, setting
from kftune.settings.groups import Seeding
from kftune.tasks import AUTO, DEFAULT_TASK, task_named
from kftune.training.config import BestMetric, TrainConfig
from kftune.training.search_space import LORA_OPTIONS, SEARCHABLE, Param, SearchSpace
from kftune.training.staging import CONFIG_FILE, RUNS_DIR, check_mounted, stage_run_dir

logger = logging.getLogger(__name__)

ALGORITHMS = choices_of(Algorithm)
SEEDED_ALGORITHMS = ("random", "tpe", "bayesianoptimization")  # their services read random_state
DIRECTIONS = ("maximize", "minimize")

GROUP = katib_constants.GROUP  # kubeflow.org
VERSION = katib_constants.VERSION  # v1beta1
API_VERSION = katib_constants.API_VERSION
EXPERIMENT_KIND = katib_constants.EXPERIMENT_KIND
EXPERIMENT_PLURAL = katib_constants.EXPERIMENT_PLURAL
TRIAL_PLURAL = katib_constants.TRIAL_PLURAL
EXPERIMENT_LABEL = katib_constants.EXPERIMENT_LABEL  # katib.kubeflow.org/experiment, on every Trial
SUCCEEDED = katib_constants.EXPERIMENT_SUCCEEDED
FAILED = "Failed"

LABELS = {"app.kubernetes.io/managed-by": "kftune", "app.kubernetes.io/component": "tune"}
NAME_PREFIX = "kftune-tune"
PRIMARY_CONTAINER = "training"
TRIAL_MODULE = "kftune.components.tune.trial"
TRIAL_NAME_PARAMETER = "trialName"
TRIAL_NAME_REFERENCE = "${trialSpec.Name}"
METRICS_COLLECTOR = "StdOut"
METRIC_STRATEGY = "latest"  # the trial prints the best epoch's values last
ISTIO_INJECT = "sidecar.istio.io/inject"
TRIALS_DIR = "trials"

DEFAULT_TIMEOUT_SECONDS = 3 * 24 * 3600
DEFAULT_POLL_SECONDS = 15.0
# Katib (and its webhook) reject Experiment names longer than 40 characters.
MAX_NAME_LENGTH = 40
# What survives Katib's unquoted `sh -c` command line (shlex's safe characters).
SHELL_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
RESOURCE_NAME = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def objective_metric(metric: str) -> str:
    """The name the trial prints its validation ``metric`` under (``val_f1_macro``)."""
    return f"val_{metric}"


def default_direction(metric: str) -> str:
    """minimize a loss or an error (rmse, mae), maximize the other scores."""
    from kftune.tasks import search_direction

    return search_direction(metric)


@dataclass
class KatibRequest:
    """What to search as a Katib Experiment, and where the trials run. The search's and the trials' settings take
    their defaults and ranges from the settings they come from (:class:`SearchConfig`, :class:`TrainResources`, the
    seed and the metric of :class:`TrainConfig`)."""

    image: str
    """The training image (it has the trial module)."""
    space: SearchSpace
    config_path: str
    """The base TrainConfig (JSON) on the shared volume."""
    dataset_path: str
    """The preprocessed dataset on the shared volume."""
    output_root: str
    """Where the trials write their models, one directory per trial, on the shared volume."""
    pvc_name: str
    """ReadWriteMany PersistentVolumeClaim shared by this pod and the trials."""
    mount_path: str
    """Where the PVC is mounted, in the trials and in this pod."""
    algorithm: Algorithm = same_as(SearchConfig, "algorithm")
    metric: BestMetric = same_as(TrainConfig, "metric_for_best_model")
    """The validation score the trials are ranked by; auto: the default task's (the launcher gives the base config's,
    its task's)."""
    direction: Direction = same_as(SearchConfig, "direction")
    """``maximize`` or ``minimize``; auto: minimize a loss or an error, maximize the others."""
    additional_metrics: tuple[str, ...] = field(default_factory=lambda: task_named(DEFAULT_TASK).best_metrics)
    """Validation scores the trials print besides the objective (a causal LM has only loss)."""
    max_trials: int = same_as(SearchConfig, "max_trials")
    parallel_trials: int = same_as(SearchConfig, "parallel_trials")
    max_failed_trials: int = same_as(SearchConfig, "max_failed_trials")
    """The Experiment fails once more trials than this have failed."""
    seed: int = same_as(Seeding, "seed")
    namespace: str = "default"
    gpus_per_trial: int = setting(int(TrainResources.gpus), ge=0)
    accelerator_type: str = same_as(TrainResources, "accelerator_type")
    """The extended resource the GPUs are requested as."""
    cpu: str | None = same_as(TrainResources, "train_cpu")
    """CPU request and limit per trial, a Kubernetes quantity (None: none)."""
    memory: str | None = same_as(TrainResources, "train_memory")
    """Memory request and limit per trial (None: none)."""
    shm_size: str | None = SHM_SIZE
    """Size of a memory-backed /dev/shm for the data loaders and NCCL (None: the container's 64 MiB)."""
    node_selector: dict[str, str] = same_as(TrainResources, "node_selector")
    tolerations: list[dict] = same_as(TrainResources, "tolerations")
    service_account: str | None = None
    """Service account of the trial pods (None: the namespace's default)."""
    trial_retries: int = setting(0, ge=0)
    """Retries of a failed trial pod (the Job's backoffLimit); a failed trial counts towards max_failed_trials."""
    active_deadline_seconds: int | None = None
    """Deadline of each trial's Job, enforced by the cluster should this pod die without deleting the Experiment."""
    python: str = "python"
    name: str = field(default_factory=lambda: new_job_name(NAME_PREFIX))

    def __post_init__(self):
        if self.metric == AUTO:
            self.metric = task_named(DEFAULT_TASK).defaults["metric_for_best_model"]
        if self.direction == AUTO:
            self.direction = default_direction(self.metric)
        self.validate()

    def validate(self) -> None:
        """Reject what Katib or the cluster would reject (or misread), naming the field."""
        check_settings(self)
        check_name(self.name, MAX_NAME_LENGTH, "Katib's rule for Experiments")
        check_namespace(self.namespace)
        if not isinstance(self.image, str) or not self.image.strip() or any(c.isspace() for c in self.image):
            raise ConfigError(f"image is required (the training image the trials run), got {self.image!r}")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"direction must be maximize or minimize, got {self.direction!r}")
        if self.direction != default_direction(self.metric):
            raise ConfigError(
                f"direction={self.direction!r} with metric {self.metric!r} would pick the worst trial; "
                f"{self.metric} is to be {default_direction(self.metric)}d"
            )
        self._validate_space()
        if self.parallel_trials > self.max_trials:
            raise ConfigError(
                f"parallel_trials ({self.parallel_trials}) must not exceed max_trials ({self.max_trials})"
            )
        if self.max_failed_trials > self.max_trials:
            raise ConfigError(
                f"max_failed_trials must be between 0 and max_trials ({self.max_trials}), got {self.max_failed_trials}"
            )
        if self.algorithm == "grid":
            combinations = math.prod(len(p.grid_values()) for p in self.space.params)
            if self.max_trials > combinations:
                raise ConfigError(
                    f"max_trials ({self.max_trials}) exceeds the {combinations} combinations of the grid; "
                    "Katib's grid search rejects that: lower max_trials or add grid points"
                )
        if not isinstance(self.accelerator_type, str) or not RESOURCE_NAME.match(self.accelerator_type):
            raise ConfigError(
                f"accelerator_type must be a resource name such as 'nvidia.com/gpu', got {self.accelerator_type!r}"
            )
        check_training_pod(
            self, models.IoK8sApiCoreV1Toleration,
            carries="the dataset, the config and the trials' outputs reach the trial pods",
        )  # fmt: skip
        mount_path = str(self.mount_path)
        if not SHELL_SAFE.match(mount_path):
            raise ConfigError(
                f"mount_path must be a path without spaces or shell characters (Katib runs the trial command "
                f"through sh), got {mount_path!r}"
            )
        for name in ("config_path", "dataset_path", "output_root"):
            value = str(getattr(self, name))
            if not SHELL_SAFE.match(value) or not Path(value).is_relative_to(mount_path):
                raise ConfigError(
                    f"{name} must be a path on the shared volume ({mount_path}) without spaces or shell "
                    f"characters (Katib runs the trial command through sh), got {value!r}"
                )
        if not SHELL_SAFE.match(self.python):
            raise ConfigError(f"python must be a command without spaces or shell characters, got {self.python!r}")
        if self.service_account is not None and not is_dns_subdomain(self.service_account):
            raise ConfigError(f"service_account must be a DNS-1123 subdomain, got {self.service_account!r}")

    def _validate_space(self) -> None:
        if not isinstance(self.space, SearchSpace) or not self.space.params:
            raise ConfigError("space must be a non-empty SearchSpace (see common.training.search_space.parse_space)")
        seen = set()
        for param in self.space.params:
            if param.name not in SEARCHABLE:
                raise ConfigError(f"space: {param.name!r} cannot be searched; searchable: {', '.join(SEARCHABLE)}")
            if param.name in seen:
                raise ConfigError(f"space: {param.name} appears twice")
            seen.add(param.name)


# --- the Experiment -----------------------------------------------------------------------------


def katib_parameters(space: SearchSpace, algorithm: str) -> list[models.V1beta1ParameterSpec]:
    """The search space as Katib parameters (one per option, named like the option).

    Grid search gets every option as a ``categorical`` list of its grid values; otherwise a float
    range is a ``double`` (``logUniform`` when ``log``, with its ``step`` if any), an integer
    range an ``int`` and a list of choices a ``categorical`` list. Bayesian optimisation gets a
    linear float range as its grid values too (its service samples every double on a log scale).
    """
    parameters = []
    for param in space.params:
        as_list = (
            algorithm == "grid"
            or param.kind == "categorical"
            or (algorithm == "bayesianoptimization" and param.kind == "float" and not param.log)
        )
        if as_list:
            kind = "categorical"
            feasible = models.V1beta1FeasibleSpace(list=[str(v) for v in param.grid_values()])
        else:
            kind = "double" if param.kind == "float" else "int"
            feasible = models.V1beta1FeasibleSpace(
                min=_number(param.low, param.kind),
                max=_number(param.high, param.kind),
                step=None if param.step is None else _number(param.step, param.kind),
                distribution="logUniform" if param.log else "uniform",
            )
        parameters.append(models.V1beta1ParameterSpec(name=param.name, parameterType=kind, feasibleSpace=feasible))
    return parameters


def _number(value: float, kind: str) -> str:
    return str(int(value)) if kind == "int" else repr(float(value))


def trial_command(request: KatibRequest) -> list[str]:
    """What each trial runs; Katib substitutes the ``${trialParameters.*}`` placeholders."""
    command = [
        request.python, "-m", TRIAL_MODULE,
        "--config", str(request.config_path),
        "--dataset", str(request.dataset_path),
        "--output", f"{request.output_root}/${{trialParameters.{TRIAL_NAME_PARAMETER}}}",
        "--metric", request.metric,
    ]  # fmt: skip
    for name in request.space.names:
        command += ["--set", f"{name}=${{trialParameters.{name}}}"]
    return command


def trial_job(request: KatibRequest) -> dict:
    """The ``batch/v1`` Job each trial runs, as the plain document Katib's trialSpec holds."""
    resources = resource_quantities(request, request.accelerator_type, request.gpus_per_trial)
    container = {"name": PRIMARY_CONTAINER, "image": request.image, "command": trial_command(request)}
    if resources:
        container["resources"] = {"requests": resources, "limits": dict(resources)}
    pod_spec = training_pod_spec(request, container, restartPolicy="Never", serviceAccountName=request.service_account)
    job_spec = {
        "backoffLimit": request.trial_retries,
        "template": {"metadata": {"labels": {**LABELS, ISTIO_INJECT: "false"}}, "spec": pod_spec},
    }
    if request.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = request.active_deadline_seconds
    try:  # the pod template through Katib's own copy of the core models
        models.IoK8sApiCoreV1PodTemplateSpec.from_dict(job_spec["template"])
    except ValueError as e:
        raise ConfigError(f"the trial pod template is invalid: {e}") from e
    return {"apiVersion": "batch/v1", "kind": "Job", "spec": job_spec}


def build_experiment(request: KatibRequest) -> models.V1beta1Experiment:
    """The Katib Experiment for ``request``, as Katib's API model."""
    request.validate()
    objective_name = objective_metric(request.metric)
    additional = [objective_metric(m) for m in request.additional_metrics if m != request.metric]
    objective = models.V1beta1ObjectiveSpec(
        type=request.direction,
        objectiveMetricName=objective_name,
        additionalMetricNames=additional,
        metricStrategies=[
            models.V1beta1MetricStrategy(name=name, value=METRIC_STRATEGY) for name in [objective_name, *additional]
        ],
    )
    settings = None
    if request.algorithm in SEEDED_ALGORITHMS:
        settings = [models.V1beta1AlgorithmSetting(name="random_state", value=str(request.seed))]
    trial_parameters = [
        models.V1beta1TrialParameterSpec(
            name=TRIAL_NAME_PARAMETER,
            reference=TRIAL_NAME_REFERENCE,
            description="the trial's name: its output directory",
        )
    ]
    trial_parameters += [
        models.V1beta1TrialParameterSpec(name=name, reference=name, description=f"training option {name}")
        for name in request.space.names
    ]
    spec = models.V1beta1ExperimentSpec(
        objective=objective,
        algorithm=models.V1beta1AlgorithmSpec(algorithmName=request.algorithm, algorithmSettings=settings),
        parameters=katib_parameters(request.space, request.algorithm),
        maxTrialCount=request.max_trials,
        parallelTrialCount=request.parallel_trials,
        maxFailedTrialCount=request.max_failed_trials,
        metricsCollectorSpec=models.V1beta1MetricsCollectorSpec(
            collector=models.V1beta1CollectorSpec(kind=METRICS_COLLECTOR)
        ),
        trialTemplate=models.V1beta1TrialTemplate(
            primaryContainerName=PRIMARY_CONTAINER,
            trialParameters=trial_parameters,
            trialSpec=trial_job(request),
        ),
    )
    return models.V1beta1Experiment(
        apiVersion=API_VERSION,
        kind=EXPERIMENT_KIND,
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=request.name, namespace=request.namespace, labels=dict(LABELS)
        ),
        spec=spec,
    )


# --- running it ---------------------------------------------------------------------------------


def run_experiment(
    request: KatibRequest,
    api_client: client.ApiClient | None = None,
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    delete: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Create the Experiment, follow it to its end, delete it; return the best parameters and the trials.

    Returns ``{"experiment": handle, "best_params": {option: value}, "best_score": float,
    "best_trial": name, "best_metrics": {metric: value}, "objective": "val_<metric>",
    "direction": ..., "trials": [...]}``, the values typed like the options (int or float).
    Progress (conditions, trial counts, the best trial so far) goes to ``log`` (default: this
    module's logger). Raises :class:`KftuneError` when the create is refused, when the
    Experiment fails (with its reason and message and some failed trials' messages), when it
    finishes without any trial reporting the objective, when it has not finished after
    ``timeout_seconds``, or when the API server keeps failing. With ``delete`` a created
    Experiment is deleted whatever happens, SIGTERM (the run being cancelled) included (see
    :mod:`~kftune.cluster.lifecycle`).
    """
    body = build_experiment(request).to_dict()
    experiment = _Experiment(request, body, emitter(log, logger), Cleanup.DELETE if delete else Cleanup.KEEP)
    finished = run_resource(experiment, api_client, timeout_seconds=timeout_seconds, poll_seconds=poll_seconds)
    return _result(request, models.V1beta1Experiment.from_dict(finished.obj), experiment.trials, finished)


def final_condition(experiment: models.V1beta1Experiment) -> dict | None:
    """``{"type", "reason", "message"}`` of the Experiment's Succeeded or Failed condition, if it has one."""
    return holding_condition(experiment.status.conditions if experiment.status else None, (SUCCEEDED, FAILED))


def trial_counts(experiment: models.V1beta1Experiment) -> dict[str, int]:
    status = experiment.status or models.V1beta1ExperimentStatus()
    return {
        "total": status.trials or 0,
        "succeeded": status.trials_succeeded or 0,
        "failed": status.trials_failed or 0,
        "running": status.trials_running or 0,
        "pending": status.trials_pending or 0,
        "killed": status.trials_killed or 0,
        "early_stopped": status.trials_early_stopped or 0,
        "metrics_unavailable": status.trial_metrics_unavailable or 0,
    }


class _Experiment(ClusterResource):
    """The Experiment as the shared lifecycle runs it; its progress: conditions, trial counts, the
    best trial so far; once it has finished, its Trials are listed (before they go with it)."""

    kind = "Katib Experiment"
    kubectl_kind = "experiment"
    group, version, plural = GROUP, VERSION, EXPERIMENT_PLURAL
    labels = LABELS

    def __init__(self, request: KatibRequest, body: dict, emit: Callable[[str], None], cleanup: Cleanup):
        super().__init__(request.namespace, request.name, emit, cleanup=cleanup)
        self.request = request
        self._body = body
        self.last: tuple | None = None
        self.condition = "Created"
        self.counts = ""
        self.trials: list[dict] = []

    def body(self) -> dict:
        return self._body

    def state(self) -> str:
        """The latest condition and trial counts, for a timeout message."""
        return f"{self.condition}, {self.counts}" if self.counts else self.condition

    def created(self, obj: dict) -> None:
        r = self.request
        self.emit(
            f"{self} created: {r.algorithm} search over {', '.join(r.space.names)}; up to {r.max_trials} trials, "
            f"{r.parallel_trials} at a time, {r.gpus_per_trial} GPU(s) each; {r.direction} "
            f"{objective_metric(r.metric)}; image {r.image}"
        )

    def observe(self, api: ResourceApi, obj: dict) -> Outcome | None:
        try:
            experiment = models.V1beta1Experiment.from_dict(obj)
        except ValueError as e:
            raise KftuneError(f"{self}: unexpected status from the API server: {e}") from e
        self.report(experiment)
        condition = final_condition(experiment)
        if condition is None:
            return None
        return Outcome(condition["type"] == SUCCEEDED, f"{condition['reason']}: {condition['message']}")

    def finish(self, api: ResourceApi, obj: dict, outcome: Outcome) -> Outcome:
        self.trials = list_trials(api, self.request, self.emit)
        if outcome.succeeded:
            return outcome
        counts = trial_counts(models.V1beta1Experiment.from_dict(obj))
        return Outcome(
            False,
            f"{outcome.reason} ({counts['failed']} of {counts['total']} trials failed, "
            f"max_failed_trials={self.request.max_failed_trials}){_failed_trials_detail(self.trials)}",
        )

    def kept(self) -> None:
        self.emit(f"{self} kept; delete it with: kubectl delete experiment -n {self.namespace} {self.name}")

    def report(self, experiment: models.V1beta1Experiment) -> None:
        conditions = experiment.status.conditions if experiment.status else None
        self.condition = self.report_conditions(conditions, f"Experiment {self.name}") or self.condition
        counts = trial_counts(experiment)
        optimal = experiment.status.current_optimal_trial if experiment.status else None
        best = _optimal_summary(self.request, optimal)
        snapshot = (tuple(sorted(counts.items())), best)
        if snapshot == self.last:
            return
        self.last = snapshot
        parts = [f"{counts['succeeded']}/{self.request.max_trials} trials succeeded"]
        for key in ("failed", "running", "pending", "killed", "early_stopped", "metrics_unavailable"):
            if counts[key]:
                parts.append(f"{counts[key]} {key.replace('_', ' ')}")
        line = f"Experiment {self.name}: " + ", ".join(parts)
        if best:
            line += f"; best so far {best}"
        self.counts = ", ".join(parts)
        self.emit(line)

    def refused(self, verb: str, e: ApiException) -> str:
        what = f"cannot {verb} {self}"
        detail = api_error(e)
        if e.status == 403:
            return (
                f"{what}: not allowed; the pipeline's service account needs create, get and delete on "
                f"experiments.{GROUP} and list on trials.{GROUP} (manifests/base/rbac.yaml): {detail}"
            )
        if verb != "create":
            return super().refused(verb, e)
        if e.status == 404 and "namespace" in detail.lower():
            return f"{what}: namespace {self.namespace!r} not found: {detail}"
        if e.status == 404:
            return (
                f"{what}: Katib is not installed (no experiments.{GROUP} CRD: the API {GROUP}/{VERSION} "
                f"is not served): {detail}"
            )
        if e.status == 409:
            return (
                f"{what}: an Experiment of that name already exists (left over from an earlier run? "
                f"kubectl delete experiment -n {self.namespace} {self.name}): {detail}"
            )
        if e.status in (400, 422):
            return f"{what}: rejected by Katib's validation: {detail}"
        return super().refused(verb, e)


def _optimal_summary(request: KatibRequest, optimal: models.V1beta1OptimalTrial | None) -> str:
    if not optimal or not optimal.best_trial_name:
        return ""
    score = metric_value(
        optimal.observation.metrics if optimal.observation else None,
        objective_metric(request.metric),
        request.direction,
    )
    assignments = ", ".join(f"{a.name}={a.value}" for a in optimal.parameter_assignments or [])
    shown = "?" if score is None else f"{score:.4g}"
    return f"{objective_metric(request.metric)}={shown} ({optimal.best_trial_name}: {assignments})"


def metric_value(metrics: list[models.V1beta1Metric] | None, name: str, direction: str) -> float | None:
    """The value of metric ``name``: its ``latest`` (the strategy the spec asks for), else its best."""
    for metric in metrics or []:
        if metric.name != name:
            continue
        for text in (metric.latest, metric.max if direction == "maximize" else metric.min):
            try:
                value = float(text)
            except (TypeError, ValueError):  # None, or Katib's "unavailable"
                continue
            if math.isfinite(value):
                return value
    return None


def typed_value(param: Param, text: str):
    """A Katib assignment (a string) as the option's value: int or float, one of the choices."""
    if param.kind == "categorical":
        for choice in param.choices:
            if str(choice) == text:
                return choice
    try:
        number = float(text)
    except (TypeError, ValueError) as e:
        raise KftuneError(f"Katib assigned {param.name}={text!r}, which is not a number") from e
    return int(round(number)) if SEARCHABLE[param.name] is int else number


def typed_assignments(space: SearchSpace, assignments: list[models.V1beta1ParameterAssignment] | None) -> dict:
    """Katib's parameter assignments as ``{option: typed value}``, in the search space's order."""
    by_name = {a.name: a.value for a in assignments or []}
    return {p.name: typed_value(p, by_name[p.name]) for p in space.params if p.name in by_name}


def list_trials(api: ResourceApi, request: KatibRequest, emit: Callable[[str], None]) -> list[dict]:
    """The Experiment's Trials (name, parameters, condition, metrics, score), oldest first.

    Best effort: the trial table is a report, so an API server that keeps failing (or RBAC that
    does not allow listing trials) gives a warning and an empty list, not an error; its retries
    are not reported either.
    """
    try:
        doc = api.call(
            "list the trials of", api.custom.list_namespaced_custom_object,
            GROUP, VERSION, request.namespace, TRIAL_PLURAL,
            label_selector=f"{EXPERIMENT_LABEL}={request.name}", quiet=True,
        )  # fmt: skip
        items = [models.V1beta1Trial.from_dict(item) for item in doc.get("items") or []]
    except (ApiException, KftuneError) as e:
        emit(f"warning: cannot list the trials of Experiment {request.name} ({api_error(e)})")
        return []
    except ValueError as e:  # a Trial the models cannot read
        emit(f"warning: cannot read the trials of Experiment {request.name} ({e})")
        return []
    items.sort(key=lambda t: (str(t.metadata.creation_timestamp or ""), t.metadata.name or ""))
    return [_trial_summary(request, trial) for trial in items]


def _trial_summary(request: KatibRequest, trial: models.V1beta1Trial) -> dict:
    objective_name = objective_metric(request.metric)
    conditions = (trial.status.conditions if trial.status else None) or []
    current = next((c for c in reversed(conditions) if c.status == "True"), None)
    metrics = (trial.status.observation.metrics if trial.status and trial.status.observation else None) or []
    try:
        params = typed_assignments(request.space, trial.spec.parameter_assignments if trial.spec else None)
    except KftuneError:
        params = {a.name: a.value for a in (trial.spec.parameter_assignments if trial.spec else None) or []}
    return {
        "name": trial.metadata.name if trial.metadata else None,
        "params": params,
        "condition": current.type if current else "Created",
        "reason": current.reason if current else None,
        "message": current.message if current else None,
        "metrics": {m.name: metric_value([m], m.name, request.direction) for m in metrics if m.name},
        "score": metric_value(metrics, objective_name, request.direction),
    }


def _failed_trials_detail(trials: list[dict], limit: int = 3) -> str:
    failed = [t for t in trials if t["condition"] in ("Failed", "MetricsUnavailable", "Killed")]
    if not failed:
        return ""
    shown = "; ".join(f"trial {t['name']}: {t['condition']}: {t['reason']}: {t['message']}" for t in failed[:limit])
    more = f" (and {len(failed) - limit} more)" if len(failed) > limit else ""
    return f"; {shown}{more}"


def _result(request: KatibRequest, experiment, trials: list[dict], finished: Finished) -> dict:
    """What a succeeded Experiment found; an error if no trial reported the objective."""
    condition = final_condition(experiment)
    counts = trial_counts(experiment)
    objective_name = objective_metric(request.metric)
    optimal = experiment.status.current_optimal_trial
    score = metric_value(optimal.observation.metrics if optimal and optimal.observation else None,
                         objective_name, request.direction)  # fmt: skip
    if not optimal or not optimal.parameter_assignments or score is None:
        raise KftuneError(
            f"Katib Experiment {request.namespace}/{request.name} finished ({condition['reason']}) but no trial "
            f"reported {objective_name}: {counts['succeeded']} succeeded, {counts['failed']} failed, "
            f"{counts['metrics_unavailable']} without metrics (each trial must print '{objective_name}=<value>' "
            f"on stdout){_failed_trials_detail(trials)}"
        )
    best_metrics = {
        m.name: metric_value([m], m.name, request.direction) for m in optimal.observation.metrics or [] if m.name
    }
    return {
        "experiment": {
            "name": request.name,
            "namespace": request.namespace,
            "uid": finished.uid,
            "algorithm": request.algorithm,
            "condition": condition["type"],
            "reason": condition["reason"],
            "message": condition["message"],
            "trial_counts": counts,
            "duration_seconds": finished.seconds,
        },
        "objective": objective_name,
        "direction": request.direction,
        "best_trial": optimal.best_trial_name,
        "best_params": typed_assignments(request.space, optimal.parameter_assignments),
        "best_score": score,
        "best_metrics": best_metrics,
        "trials": trials,
    }


# --- the whole launch ---------------------------------------------------------------------------


def launch_katib(
    base_config: TrainConfig,
    dataset_dir: str | Path,
    space: SearchSpace,
    search: SearchConfig,
    resources: TrainResources,
    *,
    image: str,
    mount_path: str | Path,
    namespace: str | None = None,
    service_account: str | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    api_client: client.ApiClient | None = None,
    log: Callable[[str], None] | None = None,
    keep_run_dir: bool = False,
) -> dict:
    """Search ``space`` with Katib, each trial training ``base_config`` with its values; return
    :func:`run_experiment`'s result.

    ``search`` says the algorithm, the direction and the trial counts; the objective is the config's
    ``metric_for_best_model`` and the seed its ``seed``. ``resources`` says each trial's GPUs, CPU, memory,
    node selector and tolerations, and the shared volume (``shared_pvc``), which must be mounted at
    ``mount_path`` in this pod too: the dataset and the config are copied into a fresh run directory on
    it, which the trials read and write their models under. On success the run directory (the trials'
    models) is removed unless ``keep_run_dir`` (then the result has ``run_dir``); on failure it stays,
    for a look at what the trials left, and the error names it.
    """
    from kftune.tasks import resolve_task

    base_config = resolve_task(base_config, dataset_dir)
    base_config.validate()
    resources.validate()
    metric, pvc_name = base_config.metric_for_best_model, resources.shared_pvc
    mount_path, dataset_dir = Path(mount_path), Path(dataset_dir)
    for name in space.names if isinstance(space, SearchSpace) else []:
        if name in LORA_OPTIONS and base_config.training_mode not in ("lora", "qlora"):
            raise ConfigError(f"search space: {name} is searched but training_mode is {base_config.training_mode!r}")
    name = new_job_name(NAME_PREFIX)
    run_dir = mount_path / RUNS_DIR / name
    request = KatibRequest(
        name=name,
        namespace=namespace or current_namespace(),
        image=image,
        space=space,
        config_path=str(run_dir / CONFIG_FILE),
        dataset_path=str(run_dir / "dataset"),
        output_root=str(run_dir / TRIALS_DIR),
        pvc_name=pvc_name,
        mount_path=str(mount_path),
        algorithm=search.algorithm,
        metric=metric,
        direction=search.direction_for(metric),
        additional_metrics=task_named(base_config.task).best_metrics,
        max_trials=search.max_trials,
        parallel_trials=search.parallel_trials,
        max_failed_trials=search.max_failed_trials,
        seed=base_config.seed,
        gpus_per_trial=int(resources.gpus),
        # an empty accelerator type leaves a pod without GPUs alone; a trial with GPUs names the default one
        accelerator_type=resources.accelerator_type or TrainResources.accelerator_type,
        cpu=resources.train_cpu,
        memory=resources.train_memory,
        node_selector=dict(resources.node_selector),
        tolerations=list(resources.tolerations),
        service_account=service_account,
        active_deadline_seconds=math.ceil(timeout_seconds),
    )
    check_mounted(mount_path, pvc_name)
    if not dataset_dir.is_dir():
        raise ConfigError(f"dataset {dataset_dir} is not a directory")

    # Each trial checkpoints beside its own output; a shared checkpoint_dir would let one trial
    # resume another's run. Optuna pruning is for the in-process search, not Katib's.
    config = replace(base_config, checkpoint_dir="", pruning="")
    stage_run_dir(config, dataset_dir, run_dir, mount_path)
    (run_dir / TRIALS_DIR).mkdir()
    emitter(log, logger)(f"Katib run directory: {run_dir}")

    try:
        result = run_experiment(
            request, api_client, timeout_seconds=timeout_seconds, poll_seconds=poll_seconds, log=log
        )
    except KftuneError as e:
        raise KftuneError(f"{e} [inputs and trial outputs kept in {run_dir}]") from e
    if keep_run_dir:
        result["run_dir"] = str(run_dir)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result
