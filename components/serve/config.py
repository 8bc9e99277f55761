"""Settings of ``kftune serve``, apart from the server code so the CLI can show them without kserve installed."""

from __future__ import annotations

from dataclasses import dataclass

from kftune.errors import ConfigError


@dataclass
class ServeConfig:
    """How ``kftune serve`` serves a model: server ports and workers, tokenization, inference.

    A classification export is served over KServe's V1 and Open Inference protocols, a causal-LM
    export over OpenAI-compatible endpoints; settings that apply to one kind only say so."""

    model_name: str = "model"
    """Name in the URL paths (``/v1/models/<name>:predict``) and the OpenAI requests' ``model``; KServe passes the
    InferenceService's name."""
    http_port: int = 8080
    """HTTP port (KServe V1 and Open Inference protocols; OpenAI endpoints for a causal LM)."""
    grpc_port: int = 8081
    """gRPC port of the Open Inference Protocol."""
    grpc: bool = True
    """Classification: also serve the Open Inference Protocol over gRPC on ``grpc_port``."""
    workers: int = 1
    """HTTP server processes (each loads its own copy of the model). A causal LM is served by one."""
    max_seq_length: int = 0
    """Classification: texts are truncated to this many tokens. Causal LM: prompt plus completion may
    hold at most this many tokens (a longer request is refused). 0: the ``max_seq_length`` the
    export records in ``export_report.json`` (classification: 128, the pipelines' default, where it
    is missing; causal LM: the model's ``max_position_embeddings``)."""
    max_new_tokens: int = 0
    """Causal LM: tokens generated for a request that gives no ``max_tokens``. 0: the export's
    ``max_new_tokens`` (the evaluate step's generation budget)."""
    batch_size: int = 32
    """Classification: texts run through ONNX Runtime at most this many at a time (a request may hold more)."""
    max_instances: int = 1024
    """Classification: largest number of texts accepted in one request."""
    threads: int = 0
    """Intra-op threads per worker, ONNX Runtime's (classification) or torch's (causal LM) (0: the CPUs the
    process may use, a pod's CPU limit included)."""
    int8: bool = False
    """Classification: serve ``model.int8.onnx`` (the export's dynamically quantized copy) instead of
    ``model.onnx``."""

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
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 1 (or 0: the export's), got {self.max_new_tokens}")
        if self.batch_size < 1 or self.max_instances < 1:
            raise ConfigError(f"batch_size and max_instances must be >= 1, got {self.batch_size}, {self.max_instances}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0: ONNX Runtime's default), got {self.threads}")
