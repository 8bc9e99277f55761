"""What every kftune launcher (TrainJob, Katib Experiment, InferenceService) needs from the
Kubernetes API: a client, its own namespace, the checks of names and quantities the API server
would reject, and which errors are worth a retry.

Kept free of torch and the Kubeflow SDKs so that a component importing it starts fast.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import signal
import string
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity
from urllib3.exceptions import HTTPError

from kftune.errors import ConfigError, KftuneError

REQUEST_TIMEOUT_SECONDS = 60  # one API call; a hung connection must not hang the component
MAX_API_ERRORS = 5  # consecutive failed polls (API server 5xx, connection errors) tolerated
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

T = TypeVar("T")

SHARED_VOLUME = "kftune-shared"  # the pod volume of the shared PVC
SHM_VOLUME = "dshm"  # memory-backed /dev/shm

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


def poll_until(
    fetch: Callable[[], T | None],
    *,
    what: str,
    timeout_seconds: float,
    poll_seconds: float,
    emit: Callable[[str], None],
    state: Callable[[], str],
    timeout_error: Callable[[], str] | None = None,
) -> T:
    """Call ``fetch`` every ``poll_seconds`` until it returns something other than None; return that.

    ``fetch`` reads the object (and reports what changed). A transient API error (see
    :func:`is_transient`) is retried, up to ``MAX_API_ERRORS`` in a row; any other raises
    :class:`KftuneError` naming ``what``, as does the deadline, with ``state()`` as the last
    state seen (or ``timeout_error()`` as the whole message). The caller cleans up on the way out.
    """
    deadline = time.monotonic() + timeout_seconds
    errors = 0
    while True:
        try:
            result = fetch()
            errors = 0
        except (ApiException, HTTPError) as e:
            errors += 1
            if not is_transient(e) or errors > MAX_API_ERRORS:
                raise KftuneError(f"{what}: {api_error(e)}") from e
            emit(f"Kubernetes API error ({api_error(e)}), retrying ({errors}/{MAX_API_ERRORS})")
        else:
            if result is not None:
                return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if timeout_error is not None:
                raise KftuneError(timeout_error())
            raise KftuneError(
                f"{what} timed out after {timeout_seconds:g} s without finishing "
                f"(last state: {state()}); deleting it"
            )
        time.sleep(min(poll_seconds, remaining))


def new_job_name(prefix: str = "kftune-train") -> str:
    """A fresh resource name: ``prefix-`` and 8 random lowercase letters and digits."""
    alphabet = string.ascii_lowercase + string.digits
    return f"{prefix}-" + "".join(secrets.choice(alphabet) for _ in range(8))


def is_dns_label(value, pattern: re.Pattern = DNS_1123_LABEL, max_length: int = 63) -> bool:
    """Whether ``value`` is a string of at most ``max_length`` characters matching ``pattern``."""
    return isinstance(value, str) and len(value) <= max_length and bool(pattern.match(value))


def is_dns_subdomain(value) -> bool:
    """Whether ``value`` is a DNS-1123 subdomain (most object names: PVCs, runtimes, service accounts)."""
    return isinstance(value, str) and len(value) <= 253 and bool(DNS_1123_SUBDOMAIN.match(value))


def check_name(name, max_length: int, rule: str) -> None:
    """Check a resource's ``name``: a DNS-1035 label of at most ``max_length`` characters (``rule``
    says whose rule that is, for the message)."""
    if not is_dns_label(name, DNS_LABEL, max_length):
        raise ConfigError(
            f"name must be at most {max_length} lowercase letters, digits and '-', starting with a letter "
            f"and ending with a letter or digit ({rule}), got {name!r}"
        )


def check_namespace(namespace, note: str = "") -> None:
    """Check a ``namespace`` (a DNS-1123 label); ``note`` adds to the message what else is allowed."""
    if not is_dns_label(namespace):
        raise ConfigError(f"namespace must be a DNS-1123 label{note}, got {namespace!r}")


def check_quantity(name: str, value, examples: str = "'8' or '32Gi'") -> None:
    """Check that ``value`` is a Kubernetes quantity > 0 (``examples`` show the setting's usual ones)."""
    try:
        quantity = parse_quantity(value)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{name} must be a Kubernetes quantity such as {examples}, got {value!r}") from e
    if quantity <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


@contextlib.contextmanager
def sigterm_raises(job: str, kind: str = "TrainJob", then: str = "deleting it"):
    """Turn SIGTERM (a cancelled run, an evicted pod) into an exception, so that the job (a ``kind``
    resource) is cleaned up on the way out (``then`` says how) instead of the process just ending.
    Signal handlers can only be set in the main thread."""

    def handler(signum, frame):
        raise KftuneError(f"stopped by SIGTERM while {kind} {job} was running; {then}")

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, handler) if in_main_thread else None
    try:
        yield
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
