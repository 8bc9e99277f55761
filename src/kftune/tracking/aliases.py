"""The registry's aliases and who moves them: what the MLflow registry (:mod:`kftune.tracking.registry`) and its
Kubeflow Model Registry mirror (:mod:`kftune.tracking.kubeflow_registry`) share."""

from __future__ import annotations

import getpass
import os

CHAMPION, CHALLENGER = "champion", "challenger"
STORAGE_URI_TAG = "kftune.storage_uri"
"""On a version (a tag in MLflow, a custom property in the Kubeflow Model Registry): where publish put its copy,
which a deployment serves."""


def who() -> str:
    """Who moves an alias: the KFP run where there is one, else the OS user."""
    if os.environ.get("KFP_RUN_ID"):
        return f"kfp-run:{os.environ['KFP_RUN_ID']}"
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
