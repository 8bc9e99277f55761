"""Publishing settings: where model versions live."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PublishConfig:
    """Where the exported model is published as a new version (v1, v2, ...; latest moves to it)."""

    publish_uri: str = ""
    """When the gate passes, publish the ONNX model as the next version under this s3://bucket/prefix, gs://bucket/prefix or path (credentials from the task's environment, never from here). Empty: don't publish."""  # noqa: E501
    stale_after_hours: float = 24.0
    """Incomplete versions left by interrupted publishes are removed once their newest object is older than this."""
