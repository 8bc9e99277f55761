"""Submit a compiled pipeline to a Kubeflow Pipelines endpoint: ``kftune submit``.

What one submission does, all through the KFP v2beta1 REST API and the real ``kfp.Client``:

1. read the compiled YAML (``kftune compile``) and check the run parameters against its
   ``root.inputDefinitions.parameters``, converting command-line strings to the declared types,
   before any request is made;
2. ``GET /apis/v2beta1/healthz``: can we reach and are we allowed into the endpoint, and is it a
   multi-user deployment (which needs a namespace)?
3. find the pipeline by name (``GET /apis/v2beta1/pipelines?filter=...``), or create it
   (``POST /apis/v2beta1/pipelines/upload``, multipart);
4. upload the YAML as a new version of it (``POST /apis/v2beta1/pipelines/upload_version``);
5. find the experiment by name, or create it (``GET``/``POST /apis/v2beta1/experiments``);
6. start the run from that version with the parameters (``POST /apis/v2beta1/runs``) and print
   its page in the KFP UI, ``{host}/#/runs/details/{run_id}`` (the route kfp.Client links to);
7. optionally poll the run (``GET /apis/v2beta1/runs/{id}``), printing state changes of the run and
   of its tasks, until it ends or a timeout.

Version names. Unless one is given, a version is named after the YAML's content,
``kftune-<kftune version>-<sha256 prefix>``: the same YAML always gets the same name, a changed one
a new name. Re-submitting an unchanged YAML therefore meets the server's 409 (names are unique
within a pipeline) and simply reuses that version; an explicitly named version that already exists
is an error, since its content may differ. Creating a pipeline with the upload endpoint also
creates a first version named like the pipeline (that is what the KFP server does), so a new
pipeline starts with that one plus the content-named version the run uses.

Authentication (:func:`resolve_token`), first found wins: ``--token`` (discouraged: shell history,
process lists); ``$KF_PIPELINES_TOKEN``; the file named by ``$KF_PIPELINES_SA_TOKEN_PATH`` or KFP's
projected service-account token ``/var/run/secrets/kubeflow/pipelines/token`` (audience
``pipelines.kubeflow.org``, what kfp.Client uses in a pod); the pod's plain service-account token
``/var/run/secrets/kubernetes.io/serviceaccount/token``; else no token (a port-forward to a
single-user KFP). A token file is re-read on every request, since the kubelet rotates it. The
token is sent as ``Authorization: Bearer ...`` and never printed.

Where kfp.Client (2.17) does not suit a command line tool, a small subclass changes it:

* it reads and writes ``~/.config/kfp/context.json``, so a namespace left there by an earlier
  session would silently apply; here the namespace comes only from ``--namespace``,
  ``$KFP_NAMESPACE`` or, in a pod of a multi-user deployment, the pod's namespace;
* its constructor checks health when it has no namespace, and that check retries 5 times 5 s
  apart, so a 401 took 25 s (and 5 logged tracebacks) to report; here constructing makes no
  request, :func:`submit` checks once, and an answer that is not JSON (an auth proxy's login
  page) is reported as such;
* given no host it loads the in-cluster or kube config; here the host is always given
  (``--host``, ``$KFP_HOST``, kfp's ``$KF_PIPELINES_ENDPOINT``, or inside a pod the in-cluster
  service ``http://ml-pipeline.kubeflow.svc.cluster.local:8888``).

Its "Experiment details: ..." style prints are swallowed; this module reports through ``log``.
Every failure becomes a one-line :class:`KftuneError`: 401 with where the token came from and how
to set one, 403, 404 with what to check, 409 explained, 5xx with the server's message, and
connection or TLS failures naming the host and ``--ca-cert``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import ssl
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kfp
import kfp_server_api
import urllib3
import yaml
from kfp.client import ServiceAccountTokenVolumeCredentials

from kftune import __version__
from kftune.errors import KftuneError
from kftune.settings.fields import RENAMED

HOST_ENV = "KFP_HOST"
KFP_HOST_ENV = "KF_PIPELINES_ENDPOINT"  # kfp.Client's own variable, honoured too
UI_HOST_ENV = "KF_PIPELINES_UI_ENDPOINT"  # kfp.Client's: where the UI is, when not at the API's address
NAMESPACE_ENV = "KFP_NAMESPACE"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"  # kfp.Client's: another path for the projected token
KFP_SA_TOKEN_PATH = Path("/var/run/secrets/kubeflow/pipelines/token")
K8S_SA_TOKEN_PATH = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
IN_CLUSTER_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
DEFAULT_EXPERIMENT = "kftune"
DEFAULT_POLL_INTERVAL = 10.0
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")
TRANSIENT_FAILURES = 5
"""Consecutive failed polls (5xx, connection) tolerated while waiting for a run."""


@dataclass
class SubmitSettings:
    """What to submit where; None means "the default" (see :func:`submit`)."""

    host: str | None = None
    namespace: str | None = None
    token: str | None = field(default=None, repr=False)
    ca_cert: str | None = None
    verify_tls: bool = True
    pipeline_name: str | None = None
    version_name: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    wait: bool = False
    timeout: float | None = None
    """Seconds to wait for the run to end; None: no limit."""
    poll_interval: float = DEFAULT_POLL_INTERVAL
    ui_host: str | None = None
    """Base URL of the KFP UI for the run link; default ``$KF_PIPELINES_UI_ENDPOINT`` or the host."""


@dataclass(frozen=True)
class Token:
    """A bearer token and where it came from (``source`` is safe to print, ``value`` is not)."""

    value: str | None = field(repr=False)
    source: str
    path: Path | None = None
    """A token file, re-read on every request (the kubelet rotates projected tokens)."""


@dataclass(frozen=True)
class PipelinePackage:
    """A compiled pipeline YAML: its name, description, declared parameters and content hash."""

    path: Path
    name: str
    description: str
    parameters: dict[str, dict]
    sha256: str

    @classmethod
    def load(cls, path: str | Path) -> PipelinePackage:
        path = Path(path)
        if path.suffix not in (".yaml", ".yml"):
            raise KftuneError(f"{path}: expected a compiled pipeline .yaml (kftune compile writes one)")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KftuneError(f"{path}: no such file (kftune compile writes one)") from None
        except OSError as e:
            raise KftuneError(f"{path}: cannot read: {e.strerror}") from None
        try:
            spec = next(yaml.safe_load_all(data), None)  # later documents: the platform (Kubernetes) spec
        except yaml.YAMLError as e:
            raise KftuneError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("pipelineInfo"), dict) or "root" not in spec:
            raise KftuneError(f"{path}: not a compiled KFP pipeline (no pipelineInfo/root; kftune compile writes one)")
        info = spec["pipelineInfo"]
        declared = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}
        return cls(path=path, name=str(info.get("name") or path.stem), description=str(info.get("description") or ""),
                   parameters=dict(declared), sha256=hashlib.sha256(data).hexdigest())


def default_version_name(package: PipelinePackage) -> str:
    """The content-derived version name: the same YAML always gets the same name."""
    return f"kftune-{__version__}-{package.sha256[:12]}"


def default_run_name(pipeline_name: str, now: datetime | None = None) -> str:
    return f"{pipeline_name} {(now or datetime.now(UTC)).strftime('%Y-%m-%d %H:%M:%S')}"


# --- parameters ------------------------------------------------------------------------------

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_param_assignments(items: list[str]) -> dict[str, str]:
    """``["lr=0.1", "epochs=2"]`` (repeated ``--param NAME=VALUE``) -> ``{"lr": "0.1", "epochs": "2"}``."""
    params: dict[str, str] = {}
    for item in items:
        name, has_value, value = item.partition("=")
        name = name.strip()
        if not name or not has_value:
            raise KftuneError(f"--param {item!r}: expected NAME=VALUE")
        if name in params:
            raise KftuneError(f"--param {name} is given twice")
        params[name] = value
    return params


def coerce_parameters(declared: Mapping[str, dict], given: Mapping[str, Any]) -> dict[str, Any]:
    """Check run parameters against the pipeline's declared ones and convert them to the declared types.

    Strings (from the command line) are parsed: integers, floats, booleans (true/false, yes/no,
    1/0, on/off), and JSON for STRUCT and LIST parameters. Python values must already have the
    declared type. Unknown names, values that do not convert, and missing required parameters
    raise :class:`KftuneError` naming the parameter.
    """
    unknown = sorted(set(given) - set(declared))
    renamed = [f"{name} is now {RENAMED[name]}" for name in unknown if RENAMED.get(name) in declared]
    if renamed:
        raise KftuneError(f"renamed pipeline parameter: {'; '.join(renamed)}")
    if unknown:
        raise KftuneError(f"unknown pipeline parameter {', '.join(unknown)}; the pipeline takes: "
                          f"{', '.join(sorted(declared)) or '(none)'}")
    result = {name: _coerce(name, str(declared[name].get("parameterType", "STRING")), value)
              for name, value in given.items()}
    missing = [name for name, spec in declared.items()
               if name not in result and not spec.get("isOptional") and "defaultValue" not in spec]
    if missing:
        raise KftuneError(f"missing required pipeline parameter {', '.join(sorted(missing))} (--param NAME=VALUE)")
    return result


def _coerce(name: str, kind: str, value: Any) -> Any:
    given = value

    def bad(expected: str) -> KftuneError:
        return KftuneError(f"parameter {name}: expected {expected}, got {given!r}")

    if kind == "NUMBER_INTEGER":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        raise bad("an integer")
    if kind == "NUMBER_DOUBLE":
        if isinstance(value, bool):
            raise bad("a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
        if not math.isfinite(number):
            raise bad("a finite number")
        return number
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad("true or false")
    if kind == "STRING":
        if isinstance(value, str):
            return value
        raise bad("a string")
    if kind in ("STRUCT", "LIST"):
        expected_type, expected = (dict, "a JSON object") if kind == "STRUCT" else (list, "a JSON list")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise bad(expected) from None
        if isinstance(value, expected_type):
            return value
        raise bad(expected)
    raise KftuneError(f"parameter {name}: its type {kind} cannot be set when submitting")


# --- where and who ---------------------------------------------------------------------------

def resolve_host(explicit: str | None = None) -> str:
    """The KFP API's base URL: explicit, ``$KFP_HOST``, ``$KF_PIPELINES_ENDPOINT``, or in a pod the in-cluster one.

    Without a scheme, https is assumed (as kfp.Client does). A trailing slash is dropped.
    """
    host = explicit or os.environ.get(HOST_ENV) or os.environ.get(KFP_HOST_ENV)
    if not host:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return IN_CLUSTER_HOST
        raise KftuneError(f"no KFP endpoint: pass --host URL or set {HOST_ENV} (e.g. "
                          "https://kubeflow.example.com/pipeline, or http://localhost:8888 after "
                          "kubectl port-forward -n kubeflow svc/ml-pipeline 8888:8888)")
    host = host.strip().rstrip("/")
    if "://" not in host:
        host = "https://" + host
    return host


def resolve_token(explicit: str | None = None) -> Token:
    """The bearer token to send, and where it came from (see the module docstring for the order)."""
    if explicit and explicit.strip():
        return Token(explicit.strip(), "--token")
    if os.environ.get(TOKEN_ENV, "").strip():
        return Token(os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}")
    candidates = [Path(os.environ[SA_TOKEN_PATH_ENV])] if os.environ.get(SA_TOKEN_PATH_ENV) else []
    candidates += [KFP_SA_TOKEN_PATH, K8S_SA_TOKEN_PATH]
    for path in candidates:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if value:
            return Token(value, str(path), path)
    return Token(None, "none")


class KfpApiError(KftuneError):
    """A failed KFP API call; ``status`` is the HTTP status, None when no answer came (connection, TLS)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        return self.status is None or self.status >= 500


class KftuneKfpClient(kfp.Client):
    """kfp.Client with no workstation state and a one-shot health check (see the module docstring)."""

    def __init__(self, host: str, namespace: str | None = None, **kwargs: Any):
        self._kftune_namespace = namespace or ""
        # Without a namespace, kfp.Client's constructor checks healthz to find out whether to take the pod's
        # namespace; this placeholder answer makes it skip that, so constructing makes no request. submit()
        # checks healthz itself, once, and takes the pod's namespace then (pod_namespace()).
        self._kftune_healthz: kfp_server_api.V2beta1GetHealthzResponse | None = (
            kfp_server_api.V2beta1GetHealthzResponse(multi_user=False))
        with warnings.catch_warnings():
            # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later versions."
            warnings.simplefilter("ignore", FutureWarning)
            # kfp's default namespace "kubeflow" leaves the context's namespace (ours) as it is.
            super().__init__(host=host, namespace=namespace or "kubeflow", **kwargs)
        self._kftune_healthz = None

    def _load_config(self, *args: Any, **kwargs: Any) -> kfp_server_api.Configuration:
        config = super()._load_config(*args, **kwargs)
        # urllib3's default retries a refused connection or a failed TLS handshake 3 times, each with a logged
        # warning, only to fail the same way; fail at once (redirects are still followed, and waiting for a run
        # rides out a few failed polls by itself).
        config.retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5)
        return config

    def _load_context_setting_or_default(self) -> None:
        # kfp.Client reads ~/.config/kfp/context.json here; a namespace from an earlier session must not apply.
        self._context_setting = {"namespace": self._kftune_namespace}

    def set_user_namespace(self, namespace: str) -> None:
        # kfp.Client also writes ~/.config/kfp/context.json; keep it in this client only.
        self._context_setting["namespace"] = namespace

    def get_kfp_healthz(self, sleep_duration: int = 5) -> kfp_server_api.V2beta1GetHealthzResponse:
        # One request (kfp.Client makes up to 5, 5 s apart, even for a 401), remembered.
        if self._kftune_healthz is None:
            health = self._healthz_api.healthz_service_get_healthz()
            response = self._healthz_api.api_client.last_response
            try:
                json.loads(response.data or "{}")
            except ValueError:
                raise KftuneError(
                    f"{self._existing_config.host}/apis/v2beta1/healthz answered with "
                    f"{response.getheader('content-type') or 'something'} that is not JSON, not the KFP API: check "
                    f"--host; behind an authenticating proxy (a login page), set {TOKEN_ENV}"
                ) from None
            self._kftune_healthz = health
        return self._kftune_healthz


def pod_namespace() -> str | None:
    """The namespace of the pod this runs in, if it runs in one (where kfp.Client looks for it)."""
    try:
        return Path(kfp.Client._NAMESPACE_PATH).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def connect(host: str, namespace: str | None, token: Token, ca_cert: str | None = None,
            verify_tls: bool = True) -> KftuneKfpClient:
    """A kfp.Client for ``host`` with the token (a token file is re-read per request) and TLS settings."""
    kwargs: dict[str, Any] = {"ssl_ca_cert": ca_cert, "verify_ssl": verify_tls}
    if token.path is not None:
        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(str(token.path))
    elif token.value:
        kwargs["existing_token"] = token.value
    return KftuneKfpClient(host=host, namespace=namespace, **kwargs)


# --- talking to the API ----------------------------------------------------------------------

def _server_message(error: kfp_server_api.ApiException) -> str:
    """The message in an error answer: grpc-gateway's ``message``, the upload endpoints' ``error_message``."""
    body = error.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    body = (body or "").strip()
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "error_message", "error"):
            if isinstance(data.get(key), str) and data[key].strip():
                return data[key].strip()
    if not body or body[:1] == "<":  # empty, or an HTML page (a proxy's)
        return str(error.reason or "").strip()
    return body.splitlines()[0][:300]


def _short_reason(text: str) -> str:
    """The telling part of a connection error's text, e.g. ``[Errno 111] Connection refused``."""
    for marker in ("certificate verify failed", "wrong version number", "[Errno", "Connection refused"):
        if marker in text:
            text = text[text.index(marker):]
            break
    else:
        if match := re.search(r"\w+Error\(\d+, '([^']+)'\)", text):  # ConnectionResetError(104, 'Connection reset ...')
            text = match.group(1)
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", text).strip().rstrip(")").strip()[:200]


class _Session:
    """One submission's calls into kfp.Client; turns whatever goes wrong into a one-line KfpApiError."""

    def __init__(self, host: str, token: Token, ca_cert: str | None, verify_tls: bool):
        self.host = host
        self.token = token
        self.ca_cert = ca_cert
        self.verify_tls = verify_tls

    def call(self, action: str, function: Callable[..., Any], *args: Any, not_found: str = "",
             conflict: str = "", **kwargs: Any) -> Any:
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                if not self.verify_tls:
                    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                return function(*args, **kwargs)
        except kfp_server_api.ApiException as e:
            if not e.status:  # kfp_server_api's own wrapping of a TLS error
                raise self._connection_error(e) from e
            raise self._http_error(e, action, not_found, conflict) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if isinstance(e, OSError) and self.token.path and getattr(e, "filename", None) == str(self.token.path):
                raise KfpApiError(f"cannot read the token file {self.token.path}: {e.strerror}") from e
            raise self._connection_error(e) from e
        except ValueError as e:  # kfp.Client's own checks (e.g. a name it finds twice)
            raise KfpApiError(f"{action}: {e}") from e

    def _http_error(self, e: kfp_server_api.ApiException, action: str, not_found: str, conflict: str) -> KfpApiError:
        status, message = e.status, _server_message(e)
        said = f": {message}" if message else ""
        if status == 401:
            if self.token.value is None:
                hint = (f"no token was found: set {TOKEN_ENV} (e.g. from kubectl create token <service-account> -n "
                        "<namespace> --audience pipelines.kubeflow.org), or run in a pod with a KFP service-account "
                        "token")
            else:
                hint = (f"the token from {self.token.source} was rejected (expired or wrong?): set {TOKEN_ENV} "
                        "to a valid one")
            return KfpApiError(f"not authorised by {self.host} while {action} (HTTP 401{said}); {hint}", status)
        if status == 403:
            return KfpApiError(f"forbidden by {self.host} while {action} (HTTP 403{said}): the token is valid but may "
                               "not do this; on multi-user KFP pass --namespace of a profile you can edit", status)
        if status == 404:
            hint = not_found or ("check --host: it must be the KFP API's base URL, e.g. "
                                 "https://kubeflow.example.com/pipeline or http://localhost:8888 after a port-forward")
            return KfpApiError(f"not found on {self.host} while {action} (HTTP 404{said}): {hint}", status)
        if status == 409:
            return KfpApiError(f"{conflict or 'it already exists'} (HTTP 409 while {action}{said})", status)
        if status >= 500:
            return KfpApiError(f"the KFP server at {self.host} failed while {action} (HTTP {status}{said})", status)
        return KfpApiError(f"{self.host} refused {action} (HTTP {status}{said})", status)

    def _connection_error(self, e: BaseException) -> KfpApiError:
        reason = getattr(e, "reason", None)
        reason_text = str(reason or e)
        is_tls = isinstance(reason, ssl.SSLError | urllib3.exceptions.SSLError) or isinstance(e, ssl.SSLError) \
            or "SSL" in reason_text or "certificate" in reason_text
        short = _short_reason(reason_text)
        if is_tls and "wrong version number" in reason_text.lower():
            return KfpApiError(f"TLS with {self.host} failed ({short}): does it speak plain http? Then use an "
                               "http:// URL in --host")
        if is_tls:
            if self.ca_cert:
                hint = f"the CA in --ca-cert {self.ca_cert} does not verify its certificate"
            else:
                hint = "pass the CA that signed its certificate with --ca-cert FILE"
            return KfpApiError(f"TLS verification of {self.host} failed ({short}): {hint} "
                               "(--insecure-skip-verify turns verification off, for testing only)")
        if self.host.startswith("http://") and re.search(r"reset|aborted|RemoteDisconnected", reason_text):
            return KfpApiError(f"{self.host} dropped the connection ({short}): does it speak https? Then use an "
                               "https:// URL in --host")
        return KfpApiError(f"cannot connect to {self.host} ({short}): check --host / ${HOST_ENV} (for a port-forward: "
                           "kubectl port-forward -n kubeflow svc/ml-pipeline 8888:8888, then http://localhost:8888)")


def _name_filter(name: str) -> str:
    """A v2beta1 Filter matching ``display_name == name`` (operation 1 is EQUALS)."""
    return json.dumps({"predicates": [{"operation": 1, "key": "display_name", "stringValue": name}]})


# --- submitting ------------------------------------------------------------------------------

def submit(settings: SubmitSettings, package_path: str | Path, client: kfp.Client | None = None,
           log: Callable[[str], None] = print) -> dict:
    """Upload ``package_path`` as a version of a named pipeline, start a run, optionally wait for it.

    Returns ``pipeline_id``, ``pipeline_name``, ``pipeline_created``, ``version_id``,
    ``version_name``, ``version_reused``, ``experiment_id``, ``experiment_name``,
    ``experiment_created``, ``run_id``, ``run_name``, ``run_url``, ``parameters``, and when
    waited ``state`` (SUCCEEDED, FAILED, CANCELED or SKIPPED) and ``error`` (the run's message, if
    any). ``client`` replaces the kfp.Client made from the settings. Raises :class:`KftuneError`.
    """
    # Everything that can be checked here is checked before the first request.
    package = PipelinePackage.load(package_path)
    parameters = coerce_parameters(package.parameters, settings.parameters)
    pipeline_name = settings.pipeline_name or package.name
    version_name = settings.version_name or default_version_name(package)
    run_name = settings.run_name or default_run_name(pipeline_name)
    host = resolve_host(settings.host)
    ui_host = (settings.ui_host or os.environ.get(UI_HOST_ENV) or host).rstrip("/")
    namespace = settings.namespace or os.environ.get(NAMESPACE_ENV) or None
    token = resolve_token(settings.token)
    if settings.ca_cert and not Path(settings.ca_cert).is_file():
        raise KftuneError(f"--ca-cert {settings.ca_cert}: no such file")
    if settings.timeout is not None and settings.timeout <= 0:
        raise KftuneError(f"--timeout must be > 0 seconds, got {settings.timeout:g}")
    if settings.poll_interval <= 0:
        raise KftuneError(f"--poll-interval must be > 0 seconds, got {settings.poll_interval:g}")

    session = _Session(host, token, settings.ca_cert, settings.verify_tls)
    if client is None:
        client = session.call("connecting", connect, host, namespace, token, settings.ca_cert, settings.verify_tls)
    health = session.call("checking the KFP API (healthz)", client.get_kfp_healthz)
    if health.multi_user and not namespace:
        namespace = pod_namespace()
        if namespace:
            client.set_user_namespace(namespace)
    if health.multi_user and not namespace:
        raise KftuneError(f"{host} is a multi-user Kubeflow Pipelines: pass --namespace (your profile's namespace) "
                          f"or set {NAMESPACE_ENV}")
    mode = f"multi-user, namespace {namespace}" if health.multi_user else "single-user"
    log(f"KFP API {host} ({mode}; token: {token.source}{'; TLS not verified' if not settings.verify_tls else ''})")
    result: dict[str, Any] = {"pipeline_name": pipeline_name, "version_name": version_name,
                              "experiment_name": settings.experiment, "run_name": run_name, "parameters": parameters}

    # The pipeline, by name, in the namespace (kfp.Client.get_pipeline_id would look among shared pipelines only).
    listed = session.call("looking up the pipeline", client.list_pipelines, filter=_name_filter(pipeline_name),
                          namespace=namespace, page_size=2)
    found = listed.pipelines or []
    if len(found) > 1:
        raise KftuneError(f"{host} has several pipelines named {pipeline_name!r}: pass --pipeline-name")
    if found:
        pipeline_id, result["pipeline_created"] = found[0].pipeline_id, False
        log(f"pipeline   {pipeline_name}: exists ({pipeline_id})")
    else:
        created = session.call(
            "uploading the pipeline", client.upload_pipeline, str(package.path), pipeline_name=pipeline_name,
            description=package.description or None, namespace=namespace,
            conflict=f"a pipeline named {pipeline_name!r} exists but was not listed (in another namespace?)")
        pipeline_id, result["pipeline_created"] = created.pipeline_id, True
        log(f"pipeline   {pipeline_name}: created ({pipeline_id})")
    if not pipeline_id:
        raise KftuneError(f"{host} answered without a pipeline id: is it the KFP API (check --host)?")
    result["pipeline_id"] = pipeline_id

    # The version: new, or (content-derived name, same content) the one uploaded before.
    description = f"{package.path.name} sha256:{package.sha256} (kftune {__version__})"
    try:
        version = session.call(
            "uploading the pipeline version", client.upload_pipeline_version, str(package.path),
            pipeline_version_name=version_name, pipeline_id=pipeline_id, description=description,
            not_found=f"pipeline {pipeline_id} is gone (deleted meanwhile?); submit again")
        result["version_reused"] = False
    except KfpApiError as e:
        if e.status != 409:
            raise
        if settings.version_name:
            raise KftuneError(
                f"pipeline {pipeline_name!r} already has a version named {version_name!r} (version names are unique "
                f"within a pipeline, and that one may hold other content): choose another --version-name, or leave it "
                f"out to name the version after the YAML's content ({default_version_name(package)})") from e
        versions = session.call("looking up the pipeline version", client.list_pipeline_versions, pipeline_id,
                                filter=_name_filter(version_name), page_size=2).pipeline_versions or []
        if len(versions) != 1:
            raise KftuneError(f"the server says pipeline {pipeline_name!r} has a version {version_name!r}, but lists "
                              f"{len(versions)} by that name") from e
        version = versions[0]
        result["version_reused"] = True
    result["version_id"] = version.pipeline_version_id
    if not result["version_id"]:
        raise KftuneError(f"{host} answered without a pipeline version id: is it the KFP API (check --host)?")
    state = "already uploaded (same content)" if result["version_reused"] else "uploaded"
    log(f"version    {version_name}: {state} ({result['version_id']})")

    # The experiment, by name, or a new one.
    def find_experiment() -> kfp_server_api.V2beta1Experiment | None:
        try:
            return client.get_experiment(experiment_name=settings.experiment, namespace=namespace)
        except ValueError as e:
            if str(e).startswith("No experiment is found"):
                return None
            raise KftuneError(f"{host} has several experiments named {settings.experiment!r}: pass --experiment") from e

    experiment = session.call("looking up the experiment", find_experiment)
    result["experiment_created"] = experiment is None
    if experiment is None:
        experiment = session.call("creating the experiment", client.create_experiment, name=settings.experiment,
                                  description="Runs submitted by kftune", namespace=namespace)
    result["experiment_id"] = experiment.experiment_id
    log(f"experiment {settings.experiment}: {'created' if result['experiment_created'] else 'exists'} "
        f"({experiment.experiment_id})")

    run = session.call("starting the run", client.run_pipeline, experiment_id=experiment.experiment_id,
                       job_name=run_name, pipeline_id=pipeline_id, version_id=result["version_id"], params=parameters,
                       not_found="the experiment or pipeline version is gone (deleted meanwhile?); submit again")
    if not run.run_id:
        raise KftuneError(f"{host} answered without a run id: is it the KFP API (check --host)?")
    result["run_id"] = run.run_id
    result["run_url"] = f"{ui_host}/#/runs/details/{run.run_id}"
    log(f"run        {run_name}: started ({run.run_id})")
    log(f"run URL    {result['run_url']}")

    if settings.wait:
        final = _wait_for_run(session, client, run.run_id, result["run_url"], settings.timeout,
                             settings.poll_interval, log)
        result["state"] = final.state
        result["error"] = final.error.message if final.error is not None and final.error.message else None
    return result


def _wait_for_run(session: _Session, client: kfp.Client, run_id: str, run_url: str, timeout: float | None,
                 poll_interval: float, log: Callable[[str], None]) -> kfp_server_api.V2beta1Run:
    """Poll the run until it ends, logging changes of its state and of its tasks' states.

    A few consecutive failed polls (5xx, connection) are tolerated; a timeout raises
    :class:`KftuneError` (the run goes on in the cluster).
    """
    start = time.monotonic()
    last_state: str | None = None
    task_states: dict[str, str] = {}
    failures = 0
    while True:
        try:
            run = session.call("reading the run", client.get_run, run_id)
            failures = 0
        except KfpApiError as e:
            failures += 1
            if not e.transient or failures > TRANSIENT_FAILURES:
                raise
            log(f"  (polling failed, trying again: {e})")
            run = None
        if run is not None:
            state = str(run.state or "RUNTIME_STATE_UNSPECIFIED")
            if state != last_state:
                log(f"run state: {state}")
                last_state = state
            for task in _tasks(run):
                if task_states.get(task.display_name) != task.state:
                    task_states[task.display_name] = task.state
                    log(f"  task {task.display_name}: {task.state}")
            if state in FINAL_STATES:
                return run
        elapsed = time.monotonic() - start
        if timeout is not None and elapsed >= timeout:
            raise KftuneError(f"timed out after {timeout:g} s waiting for run {run_id} (state {last_state}); "
                              f"it goes on in the cluster: {run_url}")
        time.sleep(poll_interval if timeout is None else max(0.0, min(poll_interval, timeout - elapsed)))


def _tasks(run: kfp_server_api.V2beta1Run) -> Iterator[kfp_server_api.V2beta1PipelineTaskDetail]:
    details = run.run_details.task_details if run.run_details is not None else None
    for task in details or []:
        if task.display_name and task.state:
            yield task
