"""Settings of ``kftune serve``, apart from the server code so the CLI can show them without kserve installed."""

from __future__ import annotations

from dataclasses import dataclass

from kftune.components.common.errors import ConfigError


@dataclass
class ServeConfig:
    """How ``kftune serve`` serves a model: server ports and workers, tokenization, inference."""

    model_name: str = "model"
    """Name in the URL paths (``/v1/models/<name>:predict``); KServe passes the InferenceService's name."""
    http_port: int = 8080
    """HTTP port (KServe V1 and Open Inference protocols)."""
    grpc_port: int = 8081
    """gRPC port of the Open Inference Protocol."""
    grpc: bool = True
    """Also serve the Open Inference Protocol over gRPC on ``grpc_port``."""
    workers: int = 1
    """HTTP server processes (each loads its own copy of the model)."""
    max_seq_length: int = 0
    """Texts are truncated to this many tokens. 0: the preprocess step's ``max_seq_length``, which
    export records in ``export_report.json`` (128, the pipelines' default, where it is missing)."""
    batch_size: int = 32
    """Texts run through ONNX Runtime at most this many at a time (a request may hold more)."""
    max_instances: int = 1024
    """Largest number of texts accepted in one request."""
    threads: int = 0
    """ONNX Runtime intra-op threads per worker (0: the CPUs the process may use, a pod's CPU limit included)."""
    int8: bool = False
    """Serve ``model.int8.onnx`` (the export's dynamically quantized copy) instead of ``model.onnx``."""

    def validate(self) -> None:
        if not self.model_name or "/" in self.model_name or ":" in self.model_name:
            raise ConfigError(f"model_name must be non-empty without '/' or ':', got {self.model_name!r}")
        for name in ("http_port", "grpc_port"):
            if not 1 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name} must be in [1, 65535], got {getattr(self, name)}")
        if self.grpc and self.http_port == self.grpc_port:
            raise ConfigError(f"http_port and grpc_port must differ, both are {self.http_port}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.max_seq_length != 0 and self.max_seq_length < 2:
            raise ConfigError(f"max_seq_length must be >= 2 (or 0: the export's), got {self.max_seq_length}")
        if self.batch_size < 1 or self.max_instances < 1:
            raise ConfigError(f"batch_size and max_instances must be >= 1, got {self.batch_size}, {self.max_instances}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0: ONNX Runtime's default), got {self.threads}")
