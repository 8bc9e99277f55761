"""What every kftune launcher (TrainJob, Katib Experiment, InferenceService) needs from the
Kubernetes API: a client, its own namespace, name patterns, and which errors are worth a retry.

Kept free of torch and the Kubeflow SDKs so that a component importing it starts fast.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kftune.components.common.errors import KftuneError

REQUEST_TIMEOUT_SECONDS = 60  # one API call; a hung connection must not hang the component
MAX_API_ERRORS = 5  # consecutive failed polls (API server 5xx, connection errors) tolerated
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # DNS-1035: Services, JobSets
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # namespaces
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def kube_api_client() -> client.ApiClient:
    """A Kubernetes API client: the pod's service account in a cluster, else the kubeconfig."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(client_configuration=configuration)
        except (config.ConfigException, OSError) as e:
            raise KftuneError(f"no Kubernetes credentials: not running in a pod and no usable kubeconfig ({e})") from e
    return client.ApiClient(configuration)


def current_namespace(default: str = "default") -> str:
    """The namespace this pod runs in, or ``default`` outside a cluster."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or default
    except OSError:
        return default


def is_transient(e: Exception) -> bool:
    """A connection error, a 5xx or a 429: worth another poll, unlike a 4xx."""
    return not isinstance(e, ApiException) or e.status is None or e.status >= 500 or e.status == 429


def api_error(e: Exception) -> str:
    """The API server's own message where it sent one (a Status object), else the exception."""
    if isinstance(e, ApiException):
        try:
            message = json.loads(e.body).get("message")
        except (TypeError, ValueError, AttributeError):
            message = None
        return f"HTTP {e.status} {e.reason}: {message or e.body or ''}".rstrip(": ")
    return str(e)
