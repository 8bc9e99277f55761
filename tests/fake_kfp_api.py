"""A fake Kubeflow Pipelines API server for tests: the v2beta1 REST endpoints ``kftune submit`` uses.

No cluster can run in the tests, so :class:`FakeKfpApiServer` serves, on 127.0.0.1 (HTTP, or HTTPS
with a given certificate), what the real ``kfp.Client`` calls for a submission:

    GET   /apis/v2beta1/healthz
    GET   /apis/v2beta1/pipelines?filter=...&namespace=...      (display_name EQUALS filters)
    GET   /apis/v2beta1/pipelines/{id}
    POST  /apis/v2beta1/pipelines/upload?name=...&namespace=...  (multipart ``uploadfile``)
    POST  /apis/v2beta1/pipelines/upload_version?name=...&pipelineid=...
    GET   /apis/v2beta1/pipelines/{id}/versions?filter=...
    GET   /apis/v2beta1/experiments?filter=...&namespace=...
    POST  /apis/v2beta1/experiments
    POST  /apis/v2beta1/runs
    GET   /apis/v2beta1/runs/{id}

Like the real server, an upload creates the pipeline and a first version named like it; names are
unique (pipelines and experiments per namespace, versions per pipeline: 409); unknown ids get 404;
error bodies are grpc-gateway's ``{"code", "message"}`` or, from the upload endpoints,
``{"error_message", "error_details"}``. Unlike it (and stricter): an unknown pipeline id in an
upload_version gets 404 (the real server says 400), and a run's parameters must be declared
by its pipeline version (400).

Scripting: ``token`` (every request needs ``Authorization: Bearer <token>``, else 401, or with
``login_proxy``, like an oauth2-proxy/Dex front, a 302 to an HTML login page); ``multi_user``;
``failures`` (an operation answered with a given status and message, every time or a number of
times); and how a created run evolves: each GET of it is a poll; it is PENDING on the first,
RUNNING until poll ``finish_on_poll``, then ``run_outcome`` (SUCCEEDED or FAILED), with the
pipeline's root tasks (from the uploaded spec, in dependency order) following along. Every
request is recorded, with its operation name.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

API = "/apis/v2beta1"
TIMESTAMP = "2026-01-01T00:00:00Z"
ROUTES = [
    ("GET", re.compile(rf"^{API}/healthz$"), "healthz"),
    ("GET", re.compile(rf"^{API}/pipelines$"), "list_pipelines"),
    ("POST", re.compile(rf"^{API}/pipelines/upload$"), "upload_pipeline"),
    ("POST", re.compile(rf"^{API}/pipelines/upload_version$"), "upload_version"),
    ("GET", re.compile(rf"^{API}/pipelines/([^/]+)/versions$"), "list_versions"),
    ("GET", re.compile(rf"^{API}/pipelines/([^/]+)$"), "get_pipeline"),
    ("GET", re.compile(rf"^{API}/experiments$"), "list_experiments"),
    ("POST", re.compile(rf"^{API}/experiments$"), "create_experiment"),
    ("POST", re.compile(rf"^{API}/runs$"), "create_run"),
    ("GET", re.compile(rf"^{API}/runs/([^/]+)$"), "get_run"),
]
LOGIN_PATH = "/oauth2/start"
LOGIN_PAGE = "<!DOCTYPE html><html><head><title>Log in</title></head><body>Log in to Kubeflow</body></html>"
GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 500: 13, 503: 14}


@dataclass
class Failure:
    """Answer an operation with this status and message instead of doing it."""

    status: int
    message: str
    times: int | None = None
    """How many calls fail (then it works); None: all of them."""


@dataclass
class RecordedRequest:
    op: str
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: dict | None
    files: dict[str, bytes] = field(default_factory=dict)


class FakeKfpApiServer:
    """An in-process fake of the KFP API server; use as a context manager."""

    def __init__(self, token: str | None = "fake-token", *, multi_user: bool = False,
                 failures: dict[str, Failure] | None = None, run_outcome: str = "SUCCEEDED",
                 finish_on_poll: int = 4, run_error: str | None = None,
                 tls: tuple[Path, Path] | None = None, login_proxy: bool = False):
        self.token = token
        self.login_proxy = login_proxy
        self.multi_user = multi_user
        self.failures = dict(failures or {})
        self.run_outcome = run_outcome
        self.finish_on_poll = finish_on_poll
        self.run_error = run_error
        self.requests: list[RecordedRequest] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.polls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.fake = self
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def __enter__(self) -> FakeKfpApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def ops(self) -> list[str]:
        """The operation names of the recorded requests, in order."""
        return [r.op for r in self.requests]

    def calls(self, op: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.op == op]

    def versions_of(self, pipeline_id: str) -> list[dict]:
        return [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]

    # --- the API ------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> tuple[int, dict | str]:
        """(status, JSON body); a str body is HTML, or with a 302 the redirect's location."""
        with self._lock:
            self.requests.append(request)
            if self.login_proxy and request.path == LOGIN_PATH:
                request.op = "login_page"
                return 200, LOGIN_PAGE
            route = next(((op, m) for method, pattern, op in ROUTES
                          if method == request.method and (m := pattern.match(request.path))), None)
            if route is None:
                return _error(404, "Not Found")
            request.op, match = route
            if self.token is not None and request.headers.get("authorization") != f"Bearer {self.token}":
                if self.login_proxy:
                    return 302, LOGIN_PATH
                return _error(401, "Unauthenticated: a valid bearer token is required")
            failure = self.failures.get(request.op)
            if failure is not None and failure.times != 0:
                if failure.times is not None:
                    failure.times -= 1
                return _error(failure.status, failure.message, upload=request.op.startswith("upload"))
            return getattr(self, "_" + request.op)(request, *match.groups())

    def _healthz(self, request: RecordedRequest) -> tuple[int, dict]:
        return 200, {"multi_user": self.multi_user, "pipeline_store": "database"}

    def _namespace(self, request: RecordedRequest, given: str | None) -> tuple[str, tuple[int, dict] | None]:
        namespace = given or ""
        if self.multi_user and not namespace:
            return "", _error(400, "Invalid input error: In multi-user mode, namespace is required")
        return namespace, None

    def _list_pipelines(self, request: RecordedRequest) -> tuple[int, dict]:
        namespace, error = self._namespace(request, _first(request.query, "namespace"))
        if error:
            return error
        try:
            items = _filtered(self.pipelines.values(), _first(request.query, "filter"))
        except ValueError as e:
            return _error(400, str(e))
        items = [p for p in items if p["namespace"] == namespace]
        return 200, ({"pipelines": items, "total_size": len(items)} if items else {})

    def _get_pipeline(self, request: RecordedRequest, pipeline_id: str) -> tuple[int, dict]:
        if pipeline_id not in self.pipelines:
            return _error(404, f"Pipeline {pipeline_id} not found")
        return 200, self.pipelines[pipeline_id]

    def _spec(self, request: RecordedRequest) -> dict | None:
        try:
            spec = next(yaml.safe_load_all(request.files.get("uploadfile", b"")), None)
        except yaml.YAMLError:
            return None
        return spec if isinstance(spec, dict) and "pipelineInfo" in spec else None

    def _upload_pipeline(self, request: RecordedRequest) -> tuple[int, dict]:
        spec = self._spec(request)
        if spec is None:
            return _error(400, "Failed to read a pipeline spec file", upload=True)
        namespace, error = self._namespace(request, _first(request.query, "namespace"))
        if error:
            return error
        name = _first(request.query, "name") or spec["pipelineInfo"]["name"]
        if any(p["name"] == name and p["namespace"] == namespace for p in self.pipelines.values()):
            return _error(409, "Failed to create a pipeline and a pipeline version", upload=True)
        pipeline = {"pipeline_id": str(uuid.uuid4()), "name": name, "display_name": name, "namespace": namespace,
                    "description": _first(request.query, "description") or "", "created_at": TIMESTAMP}
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        self._add_version(pipeline["pipeline_id"], name, pipeline["description"], spec)
        return 200, pipeline

    def _add_version(self, pipeline_id: str, name: str, description: str, spec: dict) -> dict:
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": str(uuid.uuid4()), "name": name,
                   "display_name": name, "description": description, "created_at": TIMESTAMP, "pipeline_spec": spec}
        self.versions[version["pipeline_version_id"]] = version
        return version

    def _upload_version(self, request: RecordedRequest) -> tuple[int, dict]:
        spec = self._spec(request)
        if spec is None:
            return _error(400, "Failed to create a pipeline version", upload=True)
        pipeline_id = _first(request.query, "pipelineid")
        if pipeline_id not in self.pipelines:
            return _error(404, f"Pipeline {pipeline_id} not found", upload=True)
        name = _first(request.query, "name") or "uploadfile"
        if any(v["name"] == name for v in self.versions_of(pipeline_id)):
            return _error(409, "Failed to create a pipeline version", upload=True)
        return 200, self._add_version(pipeline_id, name, _first(request.query, "description") or "", spec)

    def _list_versions(self, request: RecordedRequest, pipeline_id: str) -> tuple[int, dict]:
        if pipeline_id not in self.pipelines:
            return _error(404, f"Pipeline {pipeline_id} not found")
        try:
            items = _filtered(self.versions_of(pipeline_id), _first(request.query, "filter"))
        except ValueError as e:
            return _error(400, str(e))
        return 200, ({"pipeline_versions": items, "total_size": len(items)} if items else {})

    def _list_experiments(self, request: RecordedRequest) -> tuple[int, dict]:
        namespace, error = self._namespace(request, _first(request.query, "namespace"))
        if error:
            return error
        try:
            items = _filtered(self.experiments.values(), _first(request.query, "filter"))
        except ValueError as e:
            return _error(400, str(e))
        items = [e for e in items if e["namespace"] == namespace]
        return 200, ({"experiments": items, "total_size": len(items)} if items else {})

    def _create_experiment(self, request: RecordedRequest) -> tuple[int, dict]:
        body = request.body or {}
        namespace, error = self._namespace(request, body.get("namespace"))
        if error:
            return error
        name = body.get("display_name") or ""
        if not name:
            return _error(400, "Invalid input error: Experiment name is empty")
        if any(e["display_name"] == name and e["namespace"] == namespace for e in self.experiments.values()):
            return _error(409, f"Already exist error: experiment {name!r} already exists")
        experiment = {"experiment_id": str(uuid.uuid4()), "display_name": name, "namespace": namespace,
                      "description": body.get("description") or "", "created_at": TIMESTAMP,
                      "storage_state": "AVAILABLE"}
        self.experiments[experiment["experiment_id"]] = experiment
        return 200, experiment

    def _create_run(self, request: RecordedRequest) -> tuple[int, dict]:
        body = request.body or {}
        if body.get("experiment_id") not in self.experiments:
            return _error(404, f"Failed to create a run: experiment {body.get('experiment_id')} not found")
        reference = body.get("pipeline_version_reference") or {}
        version = self.versions.get(reference.get("pipeline_version_id") or "")
        if version is None or version["pipeline_id"] != reference.get("pipeline_id"):
            return _error(404, f"Failed to create a run: pipeline version {reference} not found")
        declared = version["pipeline_spec"]["root"].get("inputDefinitions", {}).get("parameters", {})
        parameters = (body.get("runtime_config") or {}).get("parameters") or {}
        if unknown := sorted(set(parameters) - set(declared)):
            return _error(400, f"Invalid input error: unknown parameters {unknown}")
        run = {"run_id": str(uuid.uuid4()), "experiment_id": body["experiment_id"],
               "display_name": body.get("display_name") or "", "pipeline_version_reference": reference,
               "runtime_config": body.get("runtime_config") or {}, "state": "PENDING", "created_at": TIMESTAMP,
               "storage_state": "AVAILABLE"}
        self.runs[run["run_id"]] = run
        self.polls[run["run_id"]] = 0
        return 200, run

    def _get_run(self, request: RecordedRequest, run_id: str) -> tuple[int, dict]:
        run = self.runs.get(run_id)
        if run is None:
            return _error(404, f"Run {run_id} not found")
        self.polls[run_id] += 1
        poll = self.polls[run_id]
        spec = self.versions[run["pipeline_version_reference"]["pipeline_version_id"]]["pipeline_spec"]
        tasks = _task_order(spec)
        if poll <= 1:
            run["state"], done, current = "PENDING", 0, None
        elif poll < self.finish_on_poll:
            run["state"] = "RUNNING"
            done = min(len(tasks) - 1, (poll - 2) * len(tasks) // max(1, self.finish_on_poll - 2))
            current = "RUNNING"
        elif self.run_outcome == "SUCCEEDED":
            run["state"], done, current = "SUCCEEDED", len(tasks), None
        else:
            run["state"], done, current = self.run_outcome, len(tasks) // 2, self.run_outcome
            run["error"] = {"code": 2, "message": self.run_error or f"task {tasks[done]} failed: exit code 1"}
            run["finished_at"] = TIMESTAMP
        details = [{"run_id": run_id, "task_id": f"{run_id}-{name}", "display_name": name, "state": "SUCCEEDED"}
                   for name in tasks[:done]]
        if current and done < len(tasks):
            details.append({"run_id": run_id, "task_id": f"{run_id}-{tasks[done]}", "display_name": tasks[done],
                            "state": current})
        return 200, run | {"run_details": {"task_details": details}}


def _first(query: dict[str, list[str]], key: str) -> str | None:
    return query.get(key, [None])[0]


def _filtered(items, filter_json: str | None) -> list[dict]:
    """Items matching a v2beta1 Filter; only EQUALS on name/display_name (what the client sends)."""
    items = list(items)
    if not filter_json:
        return items
    for predicate in json.loads(filter_json).get("predicates", []):
        if predicate.get("operation") not in (1, "EQUALS") or predicate.get("key") not in ("name", "display_name"):
            raise ValueError(f"Invalid input error: the fake supports only EQUALS on names, got {predicate}")
        value = predicate.get("stringValue", predicate.get("string_value"))
        items = [item for item in items if item.get(predicate["key"]) == value]
    return items


def _task_order(spec: dict) -> list[str]:
    """The root DAG's tasks in dependency order."""
    tasks = spec["root"].get("dag", {}).get("tasks", {})
    order: list[str] = []
    while len(order) < len(tasks):
        ready = [name for name, task in tasks.items()
                 if name not in order and all(dep in order for dep in task.get("dependentTasks", []))]
        if not ready:
            break
        order.extend(sorted(ready))
    return order


def _error(status: int, message: str, upload: bool = False) -> tuple[int, dict]:
    if upload:
        return status, {"error_message": message, "error_details": f"{message}: the fake's details"}
    return status, {"code": GRPC_CODES.get(status, 2), "message": message, "details": []}


class _Handler(BaseHTTPRequestHandler):
    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type") or ""
        body, files = None, {}
        if content_type.startswith("multipart/form-data"):
            message = BytesParser(policy=email_policy).parsebytes(
                f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
            for part in message.iter_parts():
                files[part.get_param("name", header="content-disposition")] = part.get_payload(decode=True)
        elif raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        request = RecordedRequest(op="unknown", method=self.command, path=url.path, query=parse_qs(url.query),
                                  headers={k.lower(): v for k, v in self.headers.items()}, body=body, files=files)
        code, payload = self.server.fake.handle(request)
        if code == 302:
            data, content_type = b"", "text/plain"
        elif isinstance(payload, str):
            data, content_type = payload.encode(), "text/html; charset=utf-8"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        self.send_response(code)
        if code == 302:
            self.send_header("Location", payload)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed CA certificate for 127.0.0.1/localhost and its key, as PEM files: (cert, key).

    It serves as both the server's certificate and the CA a client trusts with ``--ca-cert``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kfp-api")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fake-kfp-ca.pem", directory / "fake-kfp-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
