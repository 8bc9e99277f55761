"""Multi-node training: run the training loop as a Kubeflow Trainer v2 ``TrainJob``.

With ``num_nodes > 1`` the train component does not train itself. It puts the preprocessed
dataset and the training config on a shared volume (a ReadWriteMany PVC mounted in its own
pod and in every worker), submits the training image as a ``TrainJob`` on the standard
``torch-distributed`` runtime, follows the job (status changes and the log of node 0) until
it finishes, deletes it, and copies the model that rank 0 wrote back to its output artifact.

The TrainJob is built from the Kubeflow SDK's own API models (``kubeflow_trainer_api``) and
sent with the Kubernetes client, the way the SDK's ``KubernetesBackend`` does. The torch
runtime injects ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``
and ``PET_MASTER_PORT`` into the ``node`` container; torchrun reads its options from these
``PET_*`` variables, so the worker command passes none of them.

The run directory on the shared volume is laid out by
:mod:`kftune.training.staging`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from kubeflow.trainer.constants import constants as trainer_constants
from kubeflow_trainer_api import models
from kubernetes import client
from kubernetes.client.rest import ApiException

from kftune.cluster.kube import (
    REQUEST_TIMEOUT_SECONDS,
    api_error,
    check_name,
    check_namespace,
    current_namespace,
    is_dns_subdomain,
    new_job_name,
)
from kftune.cluster.lifecycle import (
    ClusterResource,
    Outcome,
    ResourceApi,
    emitter,
    holding_condition,
    run_resource,
)
from kftune.cluster.pod_spec import check_training_pod, resource_quantities, training_pod_spec
from kftune.cluster.resources import SHM_SIZE, TrainResources
from kftune.errors import ConfigError, KftuneError
from kftune.settings.fields import check_settings, same_as
from kftune.storage.atomic import atomic_directory, refuse_existing_artifact
from kftune.training.config import Launch, TrainConfig
from kftune.training.loop import HISTORY_FILE, default_checkpoint_dir
from kftune.training.staging import CONFIG_FILE, RUNS_DIR, check_mounted, stage_run_dir

logger = logging.getLogger(__name__)

GROUP = trainer_constants.GROUP  # trainer.kubeflow.org
VERSION = trainer_constants.VERSION  # v1alpha1
TRAINJOB_PLURAL = trainer_constants.TRAINJOB_PLURAL
NODE = trainer_constants.NODE  # the trainer's ReplicatedJob and its container
DEFAULT_RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime Kubeflow Trainer installs for PyTorch
RUNTIME_KIND = "ClusterTrainingRuntime"
PATCH_MANAGER = "kftune/train"
LABELS = {"app.kubernetes.io/managed-by": "kftune", "app.kubernetes.io/component": "train"}

DEFAULT_TIMEOUT_SECONDS = 24 * 3600
DEFAULT_POLL_SECONDS = 10.0

# The TrainJob's name names its JobSet and headless Service (a DNS-1035 label) and starts the
# workers' host names, <name>-node-0-<index>, which must stay within 63 characters.
MAX_NAME_LENGTH = 40
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class TrainJobRequest:
    """What to run as a TrainJob, and where. The node count, GPUs and processes per node take their defaults and
    ranges from the :class:`~kftune.training.config.Launch` settings they come from."""

    image: str
    """The training image (the train component's own image)."""
    command: list[str]
    """What every node runs: see :func:`worker_command`."""
    pvc_name: str
    """ReadWriteMany PersistentVolumeClaim shared by this pod and the workers."""
    mount_path: str
    """Where the PVC is mounted, in the workers and in this pod."""
    num_nodes: int = same_as(Launch, "num_nodes")
    namespace: str = "default"
    gpus_per_node: int = same_as(Launch, "gpus_per_node")
    procs_per_node: int = same_as(Launch, "nproc_per_node")
    """Training processes per node (0: one per GPU, or 1 on CPU nodes)."""
    runtime: str = DEFAULT_RUNTIME
    cpu: str | None = None
    """CPU request and limit per node, a Kubernetes quantity such as ``"8"`` (None: the runtime's)."""
    memory: str | None = None
    """Memory request and limit per node, such as ``"32Gi"`` (None: the runtime's)."""
    shm_size: str | None = SHM_SIZE
    """Size of a memory-backed /dev/shm for NCCL and the data loaders (None: the container's 64 MiB)."""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    active_deadline_seconds: int | None = None
    """Deadline enforced by the cluster, should this pod die without deleting the job."""
    name: str = field(default_factory=new_job_name)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Reject values the cluster would reject (or misread), naming the field."""
        check_settings(self)
        check_name(self.name, MAX_NAME_LENGTH, "a DNS-1123 label")
        check_namespace(self.namespace)
        if not isinstance(self.image, str) or not self.image.strip():
            raise ConfigError("image is required: the training image the workers run")
        if not self.command or not all(isinstance(part, str) for part in self.command):
            raise ConfigError(f"command must be a non-empty list of strings, got {self.command!r}")
        if self.gpus_per_node and self.procs_per_node > self.gpus_per_node:
            raise ConfigError(
                f"procs_per_node={self.procs_per_node} but each node has only {self.gpus_per_node} GPU(s)"
            )
        if not is_dns_subdomain(self.runtime):
            raise ConfigError(f"runtime must be a DNS-1123 subdomain, got {self.runtime!r}")
        check_training_pod(
            self, models.IoK8sApiCoreV1Toleration,
            carries="the dataset, the config, the checkpoints and the model reach the workers",
        )  # fmt: skip
        for name, value in self.env.items():
            if not isinstance(name, str) or not ENV_NAME.match(name) or not isinstance(value, str):
                raise ConfigError(f"env must map variable names to strings, got {name!r}: {value!r}")
            if name.startswith("PET_"):
                raise ConfigError(f"env must not set {name}: the torch runtime sets the PET_* variables")

    @property
    def nproc_per_node(self) -> int:
        return self.procs_per_node or self.gpus_per_node or 1


def worker_command(
    config_file: str | Path,
    dataset_dir: str | Path,
    output_dir: str | Path,
    max_restarts: int = 0,
    python: str = "python",
) -> list[str]:
    """torchrun of the training loop, as every node of the TrainJob runs it.

    No ``--nnodes``, ``--nproc-per-node``, ``--node-rank``, ``--master-addr`` or ``--standalone``:
    torchrun takes them from the ``PET_*`` variables the torch runtime sets in each node (a
    command-line option would override them). With ``--max-restarts`` torchrun restarts failed
    workers, which resume from the newest checkpoint.
    """
    return [
        python, "-m", "torch.distributed.run", f"--max-restarts={max_restarts}",
        "-m", "kftune.training.loop",
        "--config", str(config_file), "--dataset", str(dataset_dir), "--output", str(output_dir),
    ]  # fmt: skip


def build_trainjob(request: TrainJobRequest) -> models.TrainerV1alpha1TrainJob:
    """The TrainJob for ``request``, as the Kubeflow SDK's API model.

    ``spec.trainer`` sets image, command, node count, processes and resources per node; the
    shared volume, /dev/shm, node selector and tolerations go into the ``node`` ReplicatedJob's
    Pod template through a ``spec.runtimePatches`` entry (the trainer fields cannot carry them).
    """
    request.validate()
    resources = {
        key: models.IoK8sApimachineryPkgApiResourceQuantity(value)
        for key, value in resource_quantities(request, trainer_constants.GPU_LABEL, request.gpus_per_node).items()
    }
    trainer = models.TrainerV1alpha1Trainer(
        image=request.image,
        command=list(request.command),
        numNodes=request.num_nodes,
        numProcPerNode=request.nproc_per_node,
        resourcesPerNode=(
            models.IoK8sApiCoreV1ResourceRequirements(requests=resources, limits=resources) if resources else None
        ),
        env=[models.IoK8sApiCoreV1EnvVar(name=k, value=v) for k, v in request.env.items()] or None,
    )
    spec = models.TrainerV1alpha1TrainJobSpec(
        runtimeRef=models.TrainerV1alpha1RuntimeRef(name=request.runtime, kind=RUNTIME_KIND),
        trainer=trainer,
        runtimePatches=[models.TrainerV1alpha1RuntimePatch.from_dict(node_pod_patch(request))],
        activeDeadlineSeconds=request.active_deadline_seconds,
    )
    return models.TrainerV1alpha1TrainJob(
        apiVersion=trainer_constants.API_VERSION,
        kind=trainer_constants.TRAINJOB_KIND,
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=request.name, namespace=request.namespace, labels=dict(LABELS)
        ),
        spec=spec,
    )


def node_pod_patch(request: TrainJobRequest) -> dict:
    """The runtime patch that adds the shared volume (and the rest) to the ``node`` Pods."""
    pod_template = {"metadata": {"labels": dict(LABELS)}, "spec": training_pod_spec(request, {"name": NODE})}
    node_job = {"name": NODE, "template": {"spec": {"template": pod_template}}}
    return {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [node_job]}}},
    }


def run_trainjob(
    request: TrainJobRequest,
    api_client: client.ApiClient | None = None,
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Create the TrainJob, follow it to its end and delete it; return a handle of the finished job.

    Status changes and the log lines of node 0 go to ``log`` (default: this module's logger) as
    they come. Raises :class:`KftuneError` when the job fails (with the job's reason and message),
    when it has not finished after ``timeout_seconds``, or when the API server keeps failing.
    Whatever happens, a job that was created is deleted, SIGTERM (the run being cancelled)
    included (see :mod:`~kftune.cluster.lifecycle`).
    """
    body = build_trainjob(request).to_dict()
    finished = run_resource(
        _TrainJob(request, body, emitter(log, logger)), api_client,
        timeout_seconds=timeout_seconds, poll_seconds=poll_seconds,
    )  # fmt: skip
    condition = final_condition(models.TrainerV1alpha1TrainJob.from_dict(finished.obj))
    return {
        "name": request.name,
        "namespace": request.namespace,
        "uid": finished.uid,
        "status": condition["type"],
        "reason": condition["reason"],
        "message": condition["message"],
        "duration_seconds": finished.seconds,
    }


def final_condition(trainjob: models.TrainerV1alpha1TrainJob) -> dict | None:
    """``{"type", "reason", "message"}`` of the job's Complete or Failed condition, if it has one."""
    return holding_condition(
        trainjob.status.conditions if trainjob.status else None,
        (trainer_constants.TRAINJOB_COMPLETE, trainer_constants.TRAINJOB_FAILED),
    )


class _TrainJob(ClusterResource):
    """The TrainJob as the shared lifecycle runs it; its progress: job conditions, node 0's pod
    phase and log lines."""

    kind = "TrainJob"
    kubectl_kind = "trainjob"
    group, version, plural = GROUP, VERSION, TRAINJOB_PLURAL
    labels = LABELS

    def __init__(self, request: TrainJobRequest, body: dict, emit: Callable[[str], None]):
        super().__init__(request.namespace, request.name, emit)
        self.request = request
        self._body = body
        self.pod_name: str | None = None
        self.phase: str | None = None
        self.lines_seen = 0
        self._state = "Created"

    def body(self) -> dict:
        return self._body

    def state(self) -> str:
        return self._state

    def created(self, obj: dict) -> None:
        r = self.request
        self.emit(
            f"{self} created: {r.num_nodes} node(s) x {r.nproc_per_node} process(es), "
            f"{r.gpus_per_node} GPU(s) per node, runtime {r.runtime}, image {r.image}"
        )

    def observe(self, api: ResourceApi, obj: dict) -> Outcome | None:
        trainjob = models.TrainerV1alpha1TrainJob.from_dict(obj)
        conditions = trainjob.status.conditions if trainjob.status else None
        self._state = self.report_conditions(conditions, f"TrainJob {self.name}") or self._state
        self.report_node0(api.core)
        condition = final_condition(trainjob)
        if condition is None:
            return None
        return Outcome(
            condition["type"] == trainer_constants.TRAINJOB_COMPLETE,
            f"{condition['reason']}: {condition['message']} (see the node-0 log above)",
        )

    def report_node0(self, core: client.CoreV1Api) -> None:
        """Report node 0's pod phase and the log lines it printed since the last poll."""
        pods = core.list_namespaced_pod(
            self.namespace, label_selector=node0_selector(self.name), _request_timeout=REQUEST_TIMEOUT_SECONDS
        ).items
        if not pods:
            return
        pod = max(pods, key=lambda p: (p.metadata.creation_timestamp is not None, p.metadata.creation_timestamp))
        if pod.metadata.name != self.pod_name:  # first pod, or a replacement after a pod failure
            self.pod_name, self.phase, self.lines_seen = pod.metadata.name, None, 0
        phase = pod.status.phase if pod.status else None
        if phase != self.phase:
            self.phase = phase
            self._state = f"node-0 {phase}"
            self.emit(f"TrainJob {self.name}: node-0 pod {self.pod_name} is {phase}")
        if phase in (None, "Pending", "Unknown"):
            return
        try:
            response = core.read_namespaced_pod_log(
                self.pod_name,
                self.namespace,
                container=NODE,
                _preload_content=False,  # the client would json.loads() a log that looks like JSON
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except ApiException as e:
            if e.status in (400, 404):  # container not started yet, or the pod just went away
                return
            raise
        text = response.data.decode("utf-8", errors="replace")
        lines = text.splitlines()
        if phase == "Running" and text and not text.endswith("\n"):
            lines = lines[:-1]  # a line still being written: report it next time, whole
        for line in lines[self.lines_seen :]:
            self.emit(f"[node-0] {line}")
        self.lines_seen = max(self.lines_seen, len(lines))

    def refused(self, verb: str, e: ApiException) -> str:
        if e.status == 404 and verb == "create":
            return (
                f"cannot create {self}: the API {GROUP}/{VERSION} or the namespace is not there "
                f"(is Kubeflow Trainer v2 installed?): {api_error(e)}"
            )
        if e.status == 403:
            return (
                f"cannot {verb} {self}: not allowed; the pipeline's service account needs create, get "
                f"and delete on trainjobs.{GROUP} and list on pods and pods/log: {api_error(e)}"
            )
        return super().refused(verb, e)


def node0_selector(name: str) -> str:
    """Label selector of the pods of node 0 (JobSet's labels, as the Kubeflow SDK uses them)."""
    return ",".join(
        [
            f"{trainer_constants.JOBSET_NAME_LABEL}={name}",
            f"{trainer_constants.JOBSET_RJOB_NAME_LABEL}={NODE}",
            f"{trainer_constants.JOB_INDEX_LABEL}=0",
        ]
    )


def launch_multinode(
    config: TrainConfig,
    dataset_dir: str | Path,
    output_dir: str | Path,
    launch: Launch,
    resources: TrainResources,
    *,
    image: str,
    mount_path: str | Path,
    namespace: str | None = None,
    runtime: str = DEFAULT_RUNTIME,
    env: dict[str, str] | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    api_client: client.ApiClient | None = None,
    log: Callable[[str], None] | None = None,
    keep_run_dir: bool = False,
) -> dict:
    """Train on ``launch.num_nodes`` nodes as a TrainJob; return ``{"history": ..., "trainjob": handle}``.

    ``launch`` says the nodes, GPUs and processes per node and torchrun's restarts; ``resources`` each node's CPU,
    memory, node selector and tolerations, and the shared volume (``shared_pvc``), which must be mounted at
    ``mount_path`` in this pod too: the dataset and the config are copied into a fresh run directory on it, the
    workers train from there, and the model rank 0 writes there is copied to ``output_dir`` (atomically). On success
    the run directory is removed (unless ``keep_run_dir``); on failure it stays, with its checkpoints. ``image``,
    ``runtime`` and ``namespace`` (None: this pod's) say what runs where.
    """
    from kftune.tasks import resolve_task

    config = resolve_task(config, dataset_dir)
    config.validate()
    launch.validate()
    resources.validate()
    pvc_name = resources.shared_pvc
    dataset_dir, output_dir, mount_path = Path(dataset_dir), Path(output_dir), Path(mount_path)
    refuse_existing_artifact(output_dir)  # before submitting the job, not after it
    emit = emitter(log, logger)
    name = new_job_name()
    run_dir = mount_path / RUNS_DIR / name
    if config.checkpoint_dir:
        if not Path(config.checkpoint_dir).is_relative_to(mount_path):
            raise ConfigError(
                f"checkpoint_dir {config.checkpoint_dir} must be on the shared volume ({mount_path}) "
                "for multi-node training: every node reads the checkpoint a restart resumes from"
            )
    else:
        config = replace(config, checkpoint_dir=str(default_checkpoint_dir(run_dir / "model")))
    request = TrainJobRequest(
        name=name,
        namespace=namespace or current_namespace(),
        image=image,
        command=worker_command(run_dir / CONFIG_FILE, run_dir / "dataset", run_dir / "model", launch.max_restarts),
        num_nodes=launch.num_nodes,
        gpus_per_node=launch.gpus_per_node,
        procs_per_node=launch.nproc_per_node,
        pvc_name=pvc_name,
        mount_path=str(mount_path),
        runtime=runtime,
        cpu=resources.train_cpu,
        memory=resources.train_memory,
        node_selector=dict(resources.node_selector),
        tolerations=list(resources.tolerations),
        env=dict(env or {}),
        active_deadline_seconds=math.ceil(timeout_seconds),
    )
    check_mounted(mount_path, pvc_name)

    config = stage_run_dir(config, dataset_dir, run_dir, mount_path)
    emit(f"multi-node run directory: {run_dir}")

    try:
        handle = run_trainjob(request, api_client, timeout_seconds=timeout_seconds, poll_seconds=poll_seconds, log=log)
    except KftuneError as e:
        raise KftuneError(f"{e} [inputs and checkpoints kept in {run_dir}]") from e
    model_dir = run_dir / "model"
    if not (model_dir / HISTORY_FILE).is_file():
        raise KftuneError(
            f"TrainJob {request.namespace}/{name} succeeded but wrote no model to {model_dir} "
            f"(is {pvc_name!r} the same ReadWriteMany volume in every pod?)"
        )
    with atomic_directory(output_dir) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
    history = json.loads((output_dir / HISTORY_FILE).read_text(encoding="utf-8"))
    if not keep_run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"history": history, "trainjob": handle}
