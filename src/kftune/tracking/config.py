"""Where runs are recorded: the MLflow tracking URI and experiment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

OFF = "off"
LOCAL_STORE = "mlflow.db"
"""The embedded store of local runs, beside their run directories."""


@dataclass
class TrackingConfig:
    """Experiment tracking: the MLflow server or store every run is recorded in."""

    tracking_uri: str = ""
    """MLflow tracking URI runs are recorded at: a server (http://mlflow.kubeflow:5000) or a store (sqlite:///runs.db); empty: a local run records into sqlite:///<output-dir>/mlflow.db (mlflow ui --backend-store-uri on it), a pipeline on a cluster records nothing; 'off': nothing is recorded."""  # noqa: E501
    experiment_name: str = "kftune"
    """MLflow experiment the runs are recorded in (created when missing)."""

    @property
    def enabled(self) -> bool:
        return bool(self.tracking_uri) and self.tracking_uri != OFF

    def validate(self) -> None:
        """Reject an empty experiment name."""
        from kftune.errors import ConfigError

        if not self.experiment_name.strip():
            raise ConfigError("experiment_name is empty: name the MLflow experiment runs are recorded in")


def local_store(output_dir: str | Path) -> str:
    """The tracking URI of local runs under ``output_dir``: an embedded sqlite store, no server."""
    return f"sqlite:///{(Path(output_dir).resolve() / LOCAL_STORE)}"
