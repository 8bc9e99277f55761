"""Deployment settings: the KServe InferenceService that serves a published model.

Named for the pipeline form (``deploy_name``, ``serving_cpu``, ...), where they stand beside
the training settings; :meth:`DeploySettings.request` maps them onto the
:class:`~kftune.components.deploy.deploy.DeployRequest` the launcher checks and sends.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_RUNTIME = "kftune-onnx"  # the ServingRuntime manifests/ installs
DEFAULT_MODEL_FORMAT = "kftune-onnx"
DEFAULT_SERVICE_ACCOUNT = "kftune-serving"


@dataclass
class DeploySettings:
    """The InferenceService that serves the published model."""

    deploy_name: str = ""
    """When the gate passes and the model is published, create or update the KServe InferenceService of this name (a DNS-1035 label of at most 47 characters) to serve it. Empty: don't deploy."""  # noqa: E501
    deploy_namespace: str = ""
    """Namespace of the InferenceService (empty: the namespace the pipeline runs in)."""
    serving_runtime: str = DEFAULT_RUNTIME
    """KServe ServingRuntime that serves the model (manifests/ installs kftune-onnx, which runs kftune serve)."""
    serving_model_format: str = DEFAULT_MODEL_FORMAT
    """Model format name, one the runtime lists among its supported formats."""
    serving_service_account: str = DEFAULT_SERVICE_ACCOUNT
    """Service account of the predictor pods, whose secrets give KServe's storage initializer access to the model (empty: the namespace's default)."""  # noqa: E501
    serving_min_replicas: int = 1
    """Minimum predictor replicas (0 lets KServe scale to zero when idle, serverless mode)."""
    serving_max_replicas: int = 1
    """Maximum predictor replicas."""
    canary_traffic_percent: int = -1
    """On an update, the share of traffic (0-100) the new model gets while the rest stays on the previous one; -1 sends it all."""  # noqa: E501
    serving_cpu: str = "1"
    """CPU request and limit of each predictor replica, a Kubernetes quantity such as 1 or 500m."""
    serving_memory: str = "2Gi"
    """Memory request and limit of each predictor replica, a Kubernetes quantity such as 2Gi."""
    deploy_timeout_minutes: float = 15.0
    """How long to wait for the InferenceService to become Ready before failing (it is left in place either way)."""

    def request(self, model_uri: str):
        """The checked DeployRequest for ``model_uri`` (raises ConfigError naming a bad value)."""
        from kftune.components.deploy.deploy import DeployRequest

        return DeployRequest(
            model_uri=model_uri, name=self.deploy_name, namespace=self.deploy_namespace, runtime=self.serving_runtime,
            model_format=self.serving_model_format, service_account=self.serving_service_account,
            min_replicas=self.serving_min_replicas, max_replicas=self.serving_max_replicas,
            canary_traffic_percent=self.canary_traffic_percent, cpu=self.serving_cpu, memory=self.serving_memory,
        )
