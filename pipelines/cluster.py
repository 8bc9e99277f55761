"""What the pipelines ask of a Kubernetes cluster: the train task's resources and placement, the
Secrets that carry object-store credentials, and the few options KFP fixes when compiling.

Run parameters (their compile flags only choose the defaults): the train task's and search
trials' GPUs, accelerator type, CPU, memory, node selector, tolerations and PVC name
(:class:`~kftune.cluster.resources.TrainResources`) and the Secret names
(:class:`StorageSecrets`). KFP resolves them when each pod starts: backend 2.4.0 and newer for
GPUs, CPU and memory, 2.5.0 and newer for node selectors, tolerations, PVC and Secret names
(manifests/upstream/README.md). Compile-time only (:class:`ClusterOptions`): what
kfp-kubernetes 2.17 takes as constants: the ``/dev/shm`` size, the retry count, the fan-out's
parallelism, the Secrets' key names and the S3 endpoint; and whether there is a shared volume
or a Secret at all (compiled with an empty name there is none, and no run parameter for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kfp import dsl, kubernetes

from kftune.cluster.resources import SHARED_MOUNT, SHM_SIZE, TrainResources
from kftune.pipelines.secrets import use_gcs_secret, use_s3_secret
from kftune.settings.fields import check_settings, setting


@dataclass
class StorageSecrets:
    """Kubernetes Secrets with object-store credentials for the tasks that read data or models from s3:// or gs://, or publish there.

    Only Secret names and key names reach the compiled YAML; Kubernetes injects the values when
    the pod starts. The Secrets are mounted as optional, so a run whose data and models stay
    local or public starts even where a Secret is missing. The defaults fit a Kubeflow
    installation: ``mlpipeline-minio-artifact``, which KFP copies into every profile namespace,
    for its object store (SeaweedFS since KFP 2.15, MinIO before).
    """  # noqa: E501

    s3_secret: str = "mlpipeline-minio-artifact"
    """Kubernetes Secret with the S3/MinIO access key and secret key for the tasks that read data or models or publish them (compiled with --s3-secret '' there is none)."""  # noqa: E501
    gcs_secret: str = ""
    """Kubernetes Secret holding a GCS service-account key file key.json (compiled empty there is none, e.g. with Workload Identity)."""  # noqa: E501
    tracking_secret: str = ""
    """Kubernetes Secret with the MLflow tracking server's credentials for the tasks that record runs: keys MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN (compiled empty there is none)."""  # noqa: E501


TRACKING_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@dataclass(frozen=True)
class ClusterOptions:
    """What KFP fixes when a pipeline is compiled."""

    shm_size: str = SHM_SIZE
    """Size of the train task's memory-backed /dev/shm (NCCL and data loading need more than the 64M default; empty: none)."""  # noqa: E501
    retries: int = setting(2, ge=0)
    """KFP retries of a failed (e.g. preempted) train task; each resumes from the newest checkpoint."""
    trial_parallelism: int = setting(2, ge=1)
    """tune: grid/random trials running at once, each with the train task's resources."""
    s3_endpoint: str = "http://seaweedfs.kubeflow:9000"
    """S3 endpoint of the tasks that use object storage ("": AWS S3, or the image's AWS_ENDPOINT_URL); minio-service.kubeflow:9000 on older Kubeflow installs."""  # noqa: E501
    s3_region: str = ""
    """S3 region of those tasks (empty: none)."""
    s3_access_key_field: str = "accesskey"
    """Key of the access key in the S3 Secret."""
    s3_secret_key_field: str = "secretkey"
    """Key of the secret key in the S3 Secret."""

    def validate(self) -> None:
        """Reject values outside their ranges."""
        check_settings(self)


@dataclass(frozen=True)
class Cluster:
    """What a compiled pipeline asks of the cluster: the defaults of the training resources' and
    Secrets' run parameters, and the compile-time options."""

    resources: TrainResources = field(default_factory=TrainResources)
    secrets: StorageSecrets = field(default_factory=StorageSecrets)
    options: ClusterOptions = ClusterOptions()

    def __post_init__(self):
        self.resources.validate()
        self.options.validate()

    @property
    def shared_dir(self) -> str:
        """Where the shared PVC is mounted in the training tasks ("" when compiled without one)."""
        return SHARED_MOUNT if self.resources.shared_pvc else ""

    def omitted_settings(self) -> set[str]:
        """Run parameters a pipeline compiled with these values does not have (no volume, no Secret)."""
        return {name for name, value in (("shared_pvc", self.resources.shared_pvc),
                                         ("s3_secret", self.secrets.s3_secret),
                                         ("gcs_secret", self.secrets.gcs_secret),
                                         ("tracking_secret", self.secrets.tracking_secret)) if not value}

    def request_training_resources(self, task: dsl.PipelineTask, values: dict) -> None:
        """Resources and placement of a task that trains, from the pipeline's run parameters ``values``."""
        task.set_cpu_request(values["train_cpu"]).set_cpu_limit(values["train_cpu"])
        task.set_memory_request(values["train_memory"]).set_memory_limit(values["train_memory"])
        task.set_accelerator_type(values["accelerator_type"]).set_accelerator_limit(values["gpus"])
        if self.options.shm_size:
            kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                       size_limit=self.options.shm_size)
        kubernetes.add_node_selector_json(task, values["node_selector"])
        kubernetes.add_toleration_json(task, values["tolerations"])
        self.mount_shared_volume(task, values)
        if self.options.retries:
            task.set_retry(num_retries=self.options.retries, backoff_duration="30s")

    def mount_shared_volume(self, task: dsl.PipelineTask, values: dict) -> None:
        """The shared PVC (named by the run parameter) at /kftune/shared, where one was compiled in."""
        if self.resources.shared_pvc:
            kubernetes.mount_pvc(task, pvc_name=values["shared_pvc"], mount_path=SHARED_MOUNT)

    def use_tracking_secret(self, task: dsl.PipelineTask, values: dict) -> None:
        """The MLflow tracking server's credentials for a task that records into a run, where a Secret was
        compiled in (its keys are MLflow's own variables; each optional)."""
        if self.secrets.tracking_secret:
            kubernetes.use_secret_as_env(task, secret_name=values["tracking_secret"], optional=True,
                                         secret_key_to_env={key: key for key in TRACKING_SECRET_KEYS})

    def use_storage_secrets(self, task: dsl.PipelineTask, values: dict) -> None:
        """Object-store credentials for a task, from the Secrets named by the run parameters ``values``."""
        options = self.options
        if self.secrets.s3_secret:
            use_s3_secret(task, values["s3_secret"], options.s3_access_key_field, options.s3_secret_key_field,
                          endpoint=options.s3_endpoint or None, region=options.s3_region or None, optional=True)
        elif options.s3_endpoint:
            task.set_env_variable("AWS_ENDPOINT_URL", options.s3_endpoint)
        if self.secrets.gcs_secret:
            use_gcs_secret(task, values["gcs_secret"], optional=True)
