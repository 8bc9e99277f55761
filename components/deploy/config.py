"""Deployment settings: the KServe InferenceService that serves a published model.

Named for the pipeline form (``deploy_name``, ``serving_cpu``, ...), where they stand beside
the training settings; :func:`~kftune.components.deploy.deploy.deploy_request` maps them onto the
:class:`~kftune.components.deploy.deploy.DeployRequest` the launcher checks and sends, whose
fields take their defaults and ranges from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from kftune.settings.fields import setting

DEFAULT_RUNTIME = "kftune-onnx"  # the ServingRuntime manifests/ installs
DEFAULT_MODEL_FORMAT = "kftune-onnx"
DEFAULT_SERVICE_ACCOUNT = "kftune-serving"
CAUSAL_LM_RUNTIME = "kserve-huggingfaceserver"  # the ClusterServingRuntime KServe installs
CAUSAL_LM_MODEL_FORMAT = "huggingface"  # the one it supports


@dataclass
class DeployConfig:
    """The InferenceService that serves the published model."""

    deploy_name: str = ""
    """When the model is published and becomes the registry's champion (with no registry: passes the gate), create or update the KServe InferenceService of this name (a DNS-1035 label of at most 47 characters) to serve it; kftune promote and rollback serve the new champion there. Empty: don't deploy."""  # noqa: E501
    deploy_namespace: str = ""
    """Namespace of the InferenceService (empty: the namespace the pipeline runs in)."""
    serving_runtime: str = DEFAULT_RUNTIME
    """KServe ServingRuntime that serves an ONNX export (manifests/ installs kftune-onnx, which runs kftune serve)."""  # noqa: E501
    serving_model_format: str = DEFAULT_MODEL_FORMAT
    """Model format name of an ONNX export, one the runtime lists among its supported formats."""
    causal_lm_serving_runtime: str = CAUSAL_LM_RUNTIME
    """KServe ServingRuntime (or ClusterServingRuntime) that serves a causal LM, with model format huggingface: KServe's Hugging Face runtime (vLLM on a GPU, transformers on a CPU; OpenAI completions and chat completions)."""  # noqa: E501
    serving_service_account: str = DEFAULT_SERVICE_ACCOUNT
    """Service account of the predictor pods, whose secrets give KServe's storage initializer access to the model (empty: the namespace's default)."""  # noqa: E501
    serving_min_replicas: int = setting(1, ge=0)
    """Minimum predictor replicas (0 lets KServe scale to zero when idle, serverless mode)."""
    serving_max_replicas: int = setting(1, ge=1)
    """Maximum predictor replicas."""
    canary_traffic_percent: int = setting(-1, ge=0, le=100, auto=True)
    """On an update, the share of traffic (0-100) the new model gets while the rest stays on the previous one; -1 sends it all."""  # noqa: E501
    serving_cpu: str = "1"
    """CPU request and limit of each predictor replica, a Kubernetes quantity such as 1 or 500m."""
    serving_memory: str = "2Gi"
    """Memory request and limit of each predictor replica, a Kubernetes quantity such as 2Gi."""
    serving_gpus: int = setting(0, ge=0)
    """GPUs (nvidia.com/gpu) of each predictor replica, for a causal LM (KServe's Hugging Face runtime then generates with vLLM); 0 for an ONNX export."""  # noqa: E501
    serving_max_model_len: int = setting(0, ge=0)
    """Causal LMs: the most tokens of prompt and completion the served model takes (the runtime's --max_model_len); 0: the model's own limit (max_position_embeddings). Give the run's max_seq_length to serve what was trained."""  # noqa: E501
    deploy_timeout_minutes: float = setting(15.0, gt=0)
    """How long to wait for the InferenceService to become Ready before failing (it is left in place either way)."""
