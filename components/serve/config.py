"""Settings of ``kftune serve``, apart from the server code so the CLI can show them without kserve installed."""

from __future__ import annotations

from dataclasses import dataclass

from kftune.errors import ConfigError
from kftune.settings.fields import check_settings, setting


@dataclass
class ServeConfig:
    """How ``kftune serve`` serves a model: server ports and workers, tokenization, inference.

    A classification export is served over KServe's V1 and Open Inference protocols, a causal-LM
    export over OpenAI-compatible endpoints; settings that apply to one kind only say so."""

    model_name: str = "model"
    """Name in the URL paths (``/v1/models/<name>:predict``) and the OpenAI requests' ``model``; KServe passes the
    InferenceService's name."""
    http_port: int = setting(8080, ge=1, le=65535)
    """HTTP port (KServe V1 and Open Inference protocols; OpenAI endpoints for a causal LM)."""
    grpc_port: int = setting(8081, ge=1, le=65535)
    """gRPC port of the Open Inference Protocol."""
    grpc: bool = True
    """Classification: also serve the Open Inference Protocol over gRPC on ``grpc_port``."""
    workers: int = setting(1, ge=1)
    """HTTP server processes (each loads its own copy of the model). A causal LM is served by one."""
    max_seq_length: int = setting(0, ge=2, auto=True)
    """Classification: texts are truncated to this many tokens. Causal LM: prompt plus completion may
    hold at most this many tokens (a longer request is refused). 0: the ``max_seq_length`` the
    export records in ``export_report.json`` (classification: 128, the pipelines' default, where it
    is missing; causal LM: the model's ``max_position_embeddings``)."""
    max_new_tokens: int = setting(0, ge=0)
    """Causal LM: tokens generated for a request that gives no ``max_tokens``. 0: the export's
    ``max_new_tokens`` (the evaluate step's generation budget)."""
    batch_size: int = setting(32, ge=1)
    """Classification: texts run through ONNX Runtime at most this many at a time (a request may hold more)."""
    max_instances: int = setting(1024, ge=1)
    """Classification: largest number of texts accepted in one request."""
    threads: int = setting(0, ge=0)
    """Intra-op threads per worker, ONNX Runtime's (classification) or torch's (causal LM) (0: the CPUs the
    process may use, a pod's CPU limit included)."""
    int8: bool = False
    """Classification: serve ``model.int8.onnx`` (the export's dynamically quantized copy) instead of
    ``model.onnx``."""

    def validate(self) -> None:
        """Reject values outside their ranges, a model name that breaks the URL paths and one port for two servers."""
        check_settings(self)
        if not self.model_name or "/" in self.model_name or ":" in self.model_name:
            raise ConfigError(f"model_name must be non-empty without '/' or ':', got {self.model_name!r}")
        if self.grpc and self.http_port == self.grpc_port:
            raise ConfigError(f"http_port and grpc_port must differ, both are {self.http_port}")
