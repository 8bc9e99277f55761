"""Real object-store servers on 127.0.0.1 for the storage tests.

- :class:`MotoS3`: moto's S3 server in a thread of the test process. Its state lives in the
  process (moto's backends), so :meth:`MotoS3.stop` and :meth:`MotoS3.start` on the same port
  behave like a MinIO restart with its disk intact: clients see connection refused in between.
  moto checks no credentials in this mode.
- :class:`MotoS3WithAuth`: ``python -m moto.server`` in a subprocess with IAM authentication
  switched on once a user and its access key exist, so S3 requests are checked (unknown key:
  ``InvalidAccessKeyId``, wrong secret: ``SignatureDoesNotMatch``). A subprocess because
  moto's authentication switch is global to the process that serves.
- :class:`S3rver`: the ``s3rver`` npm package (a Node S3 server that checks signatures against
  its own key pair S3RVER/S3RVER and keeps objects on disk), when it is installed; killing and
  restarting it is a real server crash.
- :class:`GcsEmulator`: ``gcp-storage-emulator`` in a thread, in memory; restartable on the
  same port with its storage kept.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {HOST}:{port} after {timeout} s")


class MotoS3:
    """moto's S3 in a thread; stop/start keeps the objects (they live in this process)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self._server = None

    def start(self) -> MotoS3:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=HOST, port=self.port, verbose=False)
        self._server.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            # ThreadedMotoServer.stop() leaves the listening socket open (connections would hang
            # in the backlog); close it so clients get "connection refused", as from a dead server.
            self._server._server.server_close()
            self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None


class MotoS3WithAuth:
    """``python -m moto.server`` with IAM authentication on: credentials are checked."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.access_key = self.secret_key = None

    def start(self, bucket: str) -> MotoS3WithAuth:
        import boto3
        import requests

        env = {**os.environ, "MOTO_PORT": str(self.port)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        wait_for_port(self.port, proc=self.proc)
        # Set up while authentication is off: a user allowed everything on S3, its key, the bucket.
        setup = {"endpoint_url": self.endpoint, "region_name": "us-east-1",
                 "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="kftune")
        iam.put_user_policy(UserName="kftune", PolicyName="s3", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="kftune")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        boto3.client("s3", **setup).create_bucket(Bucket=bucket)
        # From now on every request is authenticated against moto's IAM.
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def s3rver_command() -> list[str] | None:
    """How to run s3rver here: $KFTUNE_S3RVER, .venv/s3rver (npm install --prefix .venv/s3rver s3rver), or PATH."""
    candidates = [os.environ.get("KFTUNE_S3RVER"), str(REPO / ".venv/s3rver/node_modules/.bin/s3rver"),
                  shutil.which("s3rver")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and shutil.which("node"):
            return [candidate]
    return None


class S3rver:
    """The s3rver npm package on a data directory; :meth:`kill` is a crash, :meth:`start` recovers."""

    ACCESS_KEY = SECRET_KEY = "S3RVER"

    def __init__(self, data_dir: Path):
        self.command = s3rver_command()
        self.data_dir = data_dir
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> S3rver:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [*self.command, "-d", str(self.data_dir), "-a", HOST, "-p", str(self.port), "--silent",
             "--no-vhost-buckets"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    stop = kill


class GcsEmulator:
    """gcp-storage-emulator in a thread, in memory; stop/start keeps its storage."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self._server = None
        self._storage = None

    def start(self) -> GcsEmulator:
        from gcp_storage_emulator.server import APIThread, create_server

        if self._server is None:
            self._server = create_server(HOST, self.port, in_memory=True)
        else:
            # A new listening thread over the same in-memory storage (the emulator's API thread
            # cannot be restarted once stopped).
            self._server._api = APIThread(HOST, self.port, self._server._storage)
        self._server.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
