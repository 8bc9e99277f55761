"""Experiment tracking with MLflow: every training, evaluation and export recorded in one MLflow run.

:class:`~kftune.tracking.config.TrackingConfig` says where runs go; :class:`~kftune.tracking.tracker.Tracker`
records into one run and never fails the work it records (a tracking server that is down costs a warning and a
retry; what could not be logged waits in a spool file that ``kftune track replay`` sends later).
"""

from kftune.tracking.config import TrackingConfig
from kftune.tracking.tracker import Tracker, replay

__all__ = ["TrackingConfig", "Tracker", "replay"]
