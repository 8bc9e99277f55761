"""``kftune serve`` in a subprocess, for the tests that ask it over HTTP and gRPC."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.object_servers import HOST, free_port

MODEL_NAME = "sentiment"


class Server:
    """``kftune serve`` in a subprocess; its output goes to ``log``."""

    def __init__(self, model: str, log: Path, *extra: str, model_name: str = MODEL_NAME, threads: int = 1,
                 env: dict | None = None):
        self.model_name = model_name
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://{HOST}:{self.http_port}"
        self.log = log
        command = [sys.executable, "-m", "kftune", "serve", model, "--model-name", model_name,
                   "--threads", str(threads), "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                   *extra]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 90) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kftune serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if requests.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"kftune serve not ready after {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def v1(self, body, **kwargs) -> requests.Response:
        return requests.post(f"{self.url}/v1/models/{self.model_name}:predict", json=body, timeout=30, **kwargs)

    def v2(self, body, **kwargs) -> requests.Response:
        return requests.post(f"{self.url}/v2/models/{self.model_name}/infer", json=body, timeout=30, **kwargs)


def v2_body(texts: list[str]) -> dict:
    return {"id": "req-1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def tokenized_like_preprocess(texts: list[str], model_dir: Path, max_length: int):
    """A split made from raw texts the way preprocess makes one: cleaned, truncated at ``max_length``."""
    import datasets
    from transformers import AutoTokenizer

    from kftune.data.text import clean_text

    encoded = AutoTokenizer.from_pretrained(str(model_dir))([clean_text(t) for t in texts], truncation=True,
                                                             max_length=max_length)
    return datasets.Dataset.from_dict(dict(encoded))
