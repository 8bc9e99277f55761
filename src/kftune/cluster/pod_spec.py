"""The pod a launcher starts to train on other nodes (a TrainJob's nodes, a Katib trial): the
training image with the shared PVC mounted, a memory-backed /dev/shm, CPU, memory and
accelerators, a node selector and tolerations.

A launcher's request (``TrainJobRequest``, ``KatibRequest``) has the fields read here (see
:class:`TrainingPodRequest`). What differs is where the pod goes: a TrainJob takes it as a
runtime patch of its ``node`` ReplicatedJob, Katib as the template of each trial's Job. The
documents here are plain camelCase dicts, as the API server (and both SDKs' ``from_dict``)
take them.

Kept free of torch and the Kubeflow SDKs, like :mod:`~kftune.cluster.kube`.
"""

from __future__ import annotations

from typing import Protocol

from kftune.cluster.kube import SHARED_VOLUME, SHM_VOLUME, check_quantity, is_dns_subdomain
from kftune.errors import ConfigError


class TrainingPodRequest(Protocol):
    """The fields of a launcher's request that describe its training pods."""

    pvc_name: str
    mount_path: str
    shm_size: str | None
    cpu: str | None
    memory: str | None
    node_selector: dict[str, str]
    tolerations: list[dict]
    active_deadline_seconds: int | None


def check_training_pod(request: TrainingPodRequest, toleration_model, *, carries: str) -> None:
    """Check the request's shared volume, resources, placement and deadline, naming the field.

    ``carries`` says what the shared volume brings to the pods, for the message about a missing
    ``pvc_name``; the tolerations are checked against ``toleration_model`` (an SDK's copy of the
    core Toleration).
    """
    if not request.pvc_name:
        raise ConfigError(f"pvc_name is required: a ReadWriteMany PersistentVolumeClaim through which {carries}")
    if not is_dns_subdomain(request.pvc_name):
        raise ConfigError(f"pvc_name must be a DNS-1123 subdomain, got {request.pvc_name!r}")
    mount_path = str(request.mount_path)
    if not mount_path.startswith("/") or ":" in mount_path:
        raise ConfigError(f"mount_path must be an absolute path without ':', got {request.mount_path!r}")
    for name in ("cpu", "memory", "shm_size"):
        value = getattr(request, name)
        if value is not None:
            check_quantity(name, value)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in request.node_selector.items()):
        raise ConfigError(f"node_selector must map strings to strings, got {request.node_selector!r}")
    for toleration in request.tolerations:
        try:
            toleration_model.from_dict(toleration)
        except (ValueError, TypeError, AttributeError) as e:  # pydantic's ValidationError is a ValueError
            raise ConfigError(f"tolerations: invalid toleration {toleration!r}: {e}") from e
    if request.active_deadline_seconds is not None and request.active_deadline_seconds < 1:
        raise ConfigError(f"active_deadline_seconds must be >= 1, got {request.active_deadline_seconds}")


def resource_quantities(request: TrainingPodRequest, accelerator: str, count: int) -> dict[str, str]:
    """CPU and memory (those set) and ``count`` accelerators (if any), each pod's request and limit."""
    resources = {}
    if request.cpu is not None:
        resources["cpu"] = request.cpu
    if request.memory is not None:
        resources["memory"] = request.memory
    if count:
        resources[accelerator] = str(count)
    return resources


def training_pod_spec(request: TrainingPodRequest, container: dict, **extra) -> dict:
    """The pod spec running ``container`` with the shared volume (and /dev/shm) mounted, and the
    request's node selector and tolerations; ``extra`` fields that are None are left out."""
    volumes = [{"name": SHARED_VOLUME, "persistentVolumeClaim": {"claimName": request.pvc_name}}]
    mounts = [{"name": SHARED_VOLUME, "mountPath": str(request.mount_path)}]
    if request.shm_size:
        volumes.append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": request.shm_size}})
        mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    spec = {"containers": [{**container, "volumeMounts": mounts}], "volumes": volumes}
    spec.update((key, value) for key, value in extra.items() if value is not None)
    if request.node_selector:
        spec["nodeSelector"] = dict(request.node_selector)
    if request.tolerations:
        spec["tolerations"] = [dict(t) for t in request.tolerations]
    return spec
