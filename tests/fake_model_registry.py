"""A FAKE Kubeflow Model Registry REST server, for tests: the Kubeflow Model Registry's own server (Go, with a
database) cannot run here.

It answers only the endpoints of ``/api/model_registry/v1`` that the official client (``model-registry`` 0.3.18)
calls for what kftune does (find, create and update registered models, model versions and model artifacts, list
registered models), stores what it is sent as it was sent, and records every request (method, path, query, JSON
body, Authorization header) in :attr:`FakeModelRegistryServer.requests`. It validates nothing and decides nothing
the real server decides beyond assigning ids: tests assert what kftune sends and how it reads the answers, never
the fake's own behaviour. ``fail_with`` makes every answer that HTTP status (a registry that is down).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PREFIX = "/api/model_registry/v1"
COLLECTIONS = {"registered_models": "registered_model", "model_versions": "model_version",
               "model_artifacts": "model_artifact"}


class FakeModelRegistryServer:
    """A fake Kubeflow Model Registry on 127.0.0.1 in a thread; ``url`` is its http:// address."""

    def __init__(self):
        self.requests: list[dict] = []
        self.objects: dict[str, dict[str, dict]] = {kind: {} for kind in COLLECTIONS}
        self.version_artifacts: dict[str, list[str]] = {}
        self.fail_with: int | None = None
        self._next_id = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                parsed = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                with fake._lock:
                    fake.requests.append({"method": self.command, "path": parsed.path, "query": query, "body": body,
                                          "authorization": self.headers.get("Authorization")})
                    status, answer = (fake.fail_with, {"code": "", "message": "fake outage"}) if fake.fail_with \
                        else fake._answer(self.command, parsed.path.removeprefix(PREFIX), query, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeModelRegistryServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # what a test reads
    def sent(self, method: str, path_end: str) -> list[dict]:
        """The bodies of the requests ``method`` to a path ending in ``path_end``, in order."""
        return [r["body"] for r in self.requests if r["method"] == method and r["path"].endswith(path_end)]

    def named(self, kind: str, name: str, parent: str | None = None) -> dict | None:
        return next((o for o in self.objects[kind].values() if o.get("name") == name
                     and (parent is None or _parent(kind, o, self) == parent)), None)

    # the endpoints
    def _new(self, kind: str, body: dict) -> dict:
        self._next_id += 1
        stored = {"state": "LIVE", **body, "id": str(self._next_id), "createTimeSinceEpoch": "0",
                  "lastUpdateTimeSinceEpoch": "0"}
        self.objects[kind][stored["id"]] = stored
        return stored

    def _answer(self, method: str, path: str, query: dict, body) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        if method == "GET" and parts == ["registered_models"]:
            items = list(self.objects["registered_models"].values())[:int(query.get("pageSize", 100))]
            return 200, {"items": items, "nextPageToken": "", "pageSize": len(items), "size": len(items)}
        if method == "GET" and len(parts) == 1 and parts[0] in COLLECTIONS.values():  # find by name (and parent)
            kind = next(k for k, v in COLLECTIONS.items() if v == parts[0])
            found = self.named(kind, query.get("name"), query.get("parentResourceId"))
            return (200, found) if found else (404, {"code": "404", "message": "not found"})
        if method == "POST" and parts in (["registered_models"], ["model_versions"]):
            return 201, self._new(parts[0], body)
        if method == "POST" and len(parts) == 3 and parts[0] == "model_versions" and parts[2] == "artifacts":
            artifact = self._new("model_artifacts", body)
            self.version_artifacts.setdefault(parts[1], []).append(artifact["id"])
            return 201, artifact
        if method == "PATCH" and len(parts) == 2 and parts[0] in COLLECTIONS and parts[1] in self.objects[parts[0]]:
            self.objects[parts[0]][parts[1]].update(body)
            return 200, self.objects[parts[0]][parts[1]]
        return 404, {"code": "404", "message": f"the fake does not answer {method} {path}"}


def _parent(kind: str, obj: dict, fake: FakeModelRegistryServer) -> str | None:
    if kind == "model_versions":
        return obj.get("registeredModelId")
    if kind == "model_artifacts":
        return next((v for v, ids in fake.version_artifacts.items() if obj["id"] in ids), None)
    return None
