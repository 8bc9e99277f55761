"""A real MLflow tracking server on 127.0.0.1 for the tracking tests.

:class:`MlflowServer` runs ``mlflow server`` in a subprocess (its own process group): a sqlite backend store and
an artifact directory under ``root`` (or, given ``s3_endpoint``, a bucket of that S3 server: the artifacts of a
cluster's tracking server live in an object store), served on a free port. :meth:`MlflowServer.stop` kills it,
as a crash would (clients see connection refused), and :meth:`MlflowServer.start` starts it again on the same
port with the same store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.object_servers import HOST, free_port


class MlflowServer:
    def __init__(self, root: Path, s3_endpoint: str = "", bucket: str = "mlflow"):
        self.root, self.port, self.proc = Path(root), free_port(), None
        self.s3_endpoint, self.bucket = s3_endpoint, bucket
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 240.0) -> MlflowServer:
        log = (self.root / "server.log").open("ab")
        env = dict(os.environ)
        artifacts = str(self.root / "artifacts")
        if self.s3_endpoint:
            import boto3

            s3 = boto3.client("s3", endpoint_url=self.s3_endpoint, aws_access_key_id="test",
                              aws_secret_access_key="test", region_name="us-east-1")
            if self.bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
                s3.create_bucket(Bucket=self.bucket)
            artifacts = f"s3://{self.bucket}/artifacts"
            env.update(MLFLOW_S3_ENDPOINT_URL=self.s3_endpoint, AWS_ACCESS_KEY_ID="test",
                       AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", artifacts, "--host", HOST, "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
