"""KFP component: serve a published model as a KServe InferenceService (thin layer over deploy.py).

The task's pod talks to the Kubernetes API with the pipeline's service account, which needs
get, create and patch on inferenceservices.serving.kserve.io (manifests/base/rbac.yaml). The
model's storage credentials never pass through here: KServe's storage initializer takes them
from the secrets of ``service_account``, the predictor's service account.
"""

from kfp import dsl

from kftune.components.common.images import ImageScheme


def deploy(
    model_uri: str,
    name: str,
    namespace: str = "",
    runtime: str = "kftune-onnx",
    model_format: str = "kftune-onnx",
    service_account: str = "kftune-serving",
    min_replicas: int = 1,
    max_replicas: int = 1,
    canary_traffic_percent: int = -1,
    cpu: str = "1",
    memory: str = "2Gi",
    timeout_minutes: float = 15.0,
) -> str:
    """Create or update the KServe InferenceService name serving the model at model_uri, wait until it is Ready, and return its URL.

    Args:
        model_uri: The published model version to serve: s3://bucket/path, gs://bucket/path, pvc://claim/path or http(s)://; KServe's storage initializer copies it to /mnt/models.
        name: Name of the InferenceService (lowercase letters, digits and '-', at most 47 characters); an existing one of that name is updated in place.
        namespace: Namespace of the InferenceService; empty: the namespace this pipeline runs in.
        runtime: The KServe ServingRuntime that serves the model (kftune-onnx runs kftune serve, see manifests/).
        model_format: Model format name, one the runtime lists among its supported formats.
        service_account: Service account of the serving pods, whose secrets give the storage initializer access to model_uri; empty: the namespace's default.
        min_replicas: Minimum number of serving replicas; 0 lets KServe scale to zero when idle (serverless mode).
        max_replicas: Maximum number of serving replicas (at least 1 and at least min_replicas).
        canary_traffic_percent: On an update, the percentage of traffic (0-100) the new model gets while the rest stays on the previous one; -1: all traffic to the new model.
        cpu: CPU request and limit per replica, a Kubernetes quantity such as 1 or 500m.
        memory: Memory request and limit per replica, a Kubernetes quantity such as 2Gi.
        timeout_minutes: How long to wait for the InferenceService to become Ready before failing (it is left in place either way).

    Returns:
        The URL of the InferenceService, e.g. http://sentiment.team-a.example.com.
    """
    import logging

    from kftune.components.deploy.deploy import DeployRequest, deploy_inference_service

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    request = DeployRequest(
        model_uri=model_uri,
        name=name,
        namespace=namespace,
        runtime=runtime,
        model_format=model_format,
        service_account=service_account,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        canary_traffic_percent=canary_traffic_percent,
        cpu=cpu,
        memory=memory,
    )
    return deploy_inference_service(request, timeout_seconds=timeout_minutes * 60)["url"]


def component(images: ImageScheme = ImageScheme()):
    """The deploy component running in its image under ``images``."""
    return dsl.component(deploy, base_image=images.image("deploy"), install_kfp_package=False)
