"""What a training task asks the cluster for: run parameters of the compiled pipelines.

The train task (and each search trial) gets its GPUs, accelerator type, CPU, memory, node
selector, tolerations and shared volume from these settings at run time: KFP 2.17 puts them
into the compiled YAML as placeholders that the KFP backend resolves when the pod starts
(backend 2.4.0 and newer for GPUs, CPU and memory; 2.5.0 and newer for the node selector,
tolerations, PVC and Secret names). The compile flags only choose their defaults.

The backend reads resource placeholders as strings (a number-typed parameter would resolve
to nothing), so ``gpus`` is a whole number written as text. ``gpus`` "0" gives a pod that
requests no accelerator (a ``nvidia.com/gpu: 0`` limit, which the scheduler skips); an empty
``accelerator_type`` drops the accelerator entry altogether.

The checks run where they still can: in the CLI before a local run or a compile, and in the
first lines of the train task, on the values the run was started with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kftune.errors import ConfigError

ACCELERATOR_TYPES = ("nvidia.com/gpu", "amd.com/gpu")  # what torch's CUDA/ROCm build and NCCL/RCCL drive
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
TOLERATION_OPERATORS = ("Equal", "Exists")
SHARED_MOUNT = "/kftune/shared"
"""Where the shared PVC is mounted in the train and search tasks."""
SHM_SIZE = "8Gi"
"""Size of the memory-backed /dev/shm of every training pod: the pipelines' train task (the default of the compile
flag --shm-size), a TrainJob's nodes and Katib's trials. NCCL and the data loaders need more than the 64M default;
it counts against the pod's memory only as far as it is used."""


@dataclass
class TrainResources:
    """The train task's (and each search trial's) pod: resources and placement."""

    gpus: str = "1"
    """GPUs of the train task (and of each search trial), a whole number; 0 asks for none."""
    accelerator_type: str = "nvidia.com/gpu"
    """Accelerator resource name of those GPUs: nvidia.com/gpu or amd.com/gpu (empty: no accelerator entry)."""
    train_cpu: str = "4"
    """CPU request and limit of the train task, a Kubernetes quantity such as 4 or 500m."""
    train_memory: str = "16G"
    """Memory request and limit of the train task, a Kubernetes quantity such as 16G."""
    node_selector: dict = field(default_factory=dict)
    """Node labels the train pod needs, e.g. {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}."""
    tolerations: list = field(default_factory=list)
    """Taints the train pod tolerates, as Kubernetes tolerations, e.g. [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]."""  # noqa: E501
    shared_pvc: str = "kftune-shared"
    """PersistentVolumeClaim mounted at /kftune/shared in the train and search tasks (checkpoints that outlive a pod, multi-node data); compiled with --shared-pvc '' there is none."""  # noqa: E501

    def validate(self) -> None:
        """Refuse values the cluster would reject, with the setting's name."""
        from kubernetes.utils import parse_quantity

        if not str(self.gpus).isdigit():
            raise ConfigError(f"gpus must be a whole number >= 0, got {self.gpus!r}")
        if int(self.gpus) and self.accelerator_type and self.accelerator_type not in ACCELERATOR_TYPES:
            raise ConfigError(
                f"unknown accelerator type {self.accelerator_type!r}: kftune trains on {', '.join(ACCELERATOR_TYPES)}"
            )
        for name in ("train_cpu", "train_memory"):
            value = getattr(self, name)
            try:
                positive = parse_quantity(value) > 0
            except (ValueError, TypeError):
                positive = False
            if not positive:
                raise ConfigError(f"{name} must be a Kubernetes quantity > 0 such as '4' or '16Gi', got {value!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.node_selector.items()):
            raise ConfigError(f"node_selector must map label names to values (strings), got {self.node_selector!r}")
        for toleration in self.tolerations:
            check_toleration(toleration)


def check_toleration(toleration) -> None:
    """A toleration as Kubernetes takes it: key, operator (Equal needs a value), effect."""
    if not isinstance(toleration, dict):
        raise ConfigError(f"tolerations: expected an object such as {{\"key\": \"nvidia.com/gpu\", \"operator\": "
                          f"\"Exists\", \"effect\": \"NoSchedule\"}}, got {toleration!r}")
    unknown = set(toleration) - {"key", "operator", "value", "effect", "tolerationSeconds"}
    if unknown:
        raise ConfigError(f"tolerations: unknown fields {sorted(unknown)} in {toleration!r}")
    operator = toleration.get("operator", "Equal")
    if operator not in TOLERATION_OPERATORS:
        raise ConfigError(f"tolerations: operator must be Equal or Exists, got {operator!r}")
    effect = toleration.get("effect")
    if effect is not None and effect not in TOLERATION_EFFECTS:
        raise ConfigError(f"tolerations: effect must be one of {', '.join(TOLERATION_EFFECTS)}, got {effect!r}")
    if operator == "Exists" and toleration.get("value"):
        raise ConfigError(f"tolerations: operator Exists takes no value, got {toleration!r}")

