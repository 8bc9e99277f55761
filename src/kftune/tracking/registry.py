"""The model registry: every model that passes the gate becomes a version of a registered model, and one version,
the ``champion``, is the model in production.

Export registers a model that passed the gate (:func:`register`) as a new version of the registered model in
the MLflow registry of the run's tracking URI, with its lineage (the run, the dataset digest, the base model),
its test scores and the gate, and gives it the alias ``challenger``; the first version of a registered model
becomes its ``champion``. Only a promotion moves ``champion`` (:func:`promote`, :func:`rollback`: ``kftune
promote NAME VERSION``, ``kftune rollback NAME``); each move is recorded on the registered model (who, when, why,
from which version) in the tag ``kftune.champion_history``.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
from dataclasses import dataclass

from kftune.errors import KftuneError

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "kftune.champion_history"
HISTORY_KEPT = 20  # moves kept in the tag (MLflow limits a tag's value to 8000 characters)
REGISTERED_FILE = "registered.json"
"""In an export: the registered model and version it became."""


@dataclass
class RegistryConfig:
    """Where a model that passes the gate is registered."""

    registered_model_name: str = ""
    """Registered model (in the MLflow registry at the run's tracking URI) that a model passing the gate becomes a new version of, with the alias challenger (the first version: champion); empty: kftune-<task>; 'off': nothing is registered."""  # noqa: E501

    def name_for(self, task: str) -> str:
        return self.registered_model_name or f"kftune-{task}"

    @property
    def enabled(self) -> bool:
        return self.registered_model_name != "off"


def who() -> str:
    """Who moves an alias: the KFP run where there is one, else the OS user."""
    if os.environ.get("KFP_RUN_ID"):
        return f"kfp-run:{os.environ['KFP_RUN_ID']}"
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _client(tracking_uri: str):
    from kftune.tracking.tracker import _client as tracking_client

    return tracking_client(tracking_uri)


def _version_of(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def register(tracking_uri: str, run_id: str, name: str, source: str, tags: dict, description: str = "") -> dict:
    """A new version of registered model ``name`` from the artifacts at ``source`` of run ``run_id``: the alias
    challenger, and champion where the model has none yet. Returns {name, version, aliases, tracking_uri}."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.create_registered_model(name, description=f"kftune: {tags.get('task', '')} models")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source, run_id=run_id,
                                          tags={k: str(v) for k, v in tags.items()}, description=description)
    number = str(version.version)  # a str from a server, an int from a sqlite store
    aliases = [CHALLENGER]
    client.set_registered_model_alias(name, CHALLENGER, number)
    if _version_of(client, name, CHAMPION) is None:
        _move_champion(client, name, number, "first version of the registered model", "register")
        aliases.append(CHAMPION)
    log.info("registered %s version %s (%s) at %s", name, number, ", ".join(aliases), tracking_uri)
    return {"name": name, "version": number, "aliases": aliases, "tracking_uri": tracking_uri}


def _history(client, name: str) -> list[dict]:
    return json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))


def _move_champion(client, name: str, version: str, reason: str, action: str) -> dict:
    previous = _version_of(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, version)
    move = {"action": action, "version": str(version), "previous": previous, "by": who(), "reason": reason,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    history = (_history(client, name) + [move])[-HISTORY_KEPT:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_model_version_tag(name, str(version), f"kftune.{action}", f"{move['time']} by {move['by']}: {reason}")
    return move


def promote(tracking_uri: str, name: str, version: str, reason: str = "") -> dict:
    """Make ``version`` of ``name`` the champion; the move is recorded. Returns the move."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.get_model_version(name, str(version))
    except MlflowException as e:
        raise KftuneError(f"registered model {name!r} has no version {version} at {tracking_uri}") from e
    return _move_champion(client, name, str(version), reason or "promoted by hand", "promote")


def rollback(tracking_uri: str, name: str, reason: str = "") -> dict:
    """Give the champion alias back to the version that held it before the last move; the move is recorded."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        history = _history(client, name)
    except MlflowException as e:
        raise KftuneError(f"no registered model {name!r} at {tracking_uri}") from e
    current = _version_of(client, name, CHAMPION)
    earlier = [m for m in history if m["version"] == current and m.get("previous")]
    if not earlier:
        raise KftuneError(f"{name}: champion version {current} has no earlier champion to roll back to")
    return _move_champion(client, name, earlier[-1]["previous"], reason or f"rolled back from version {current}",
                          "rollback")


def champion_history(tracking_uri: str, name: str) -> list[dict]:
    return _history(_client(tracking_uri), name)
