"""The model registry: every model that passes the gate becomes a version of a registered model, and one version,
the ``champion``, is the model in production.

Export registers a model that passed the gate (:func:`register`) as a new version of the registered model in
the MLflow registry of the run's tracking URI, with its lineage (the run, the dataset digest, the base model),
its test scores and the gate, and gives it the alias ``challenger``; the first version of a registered model
becomes its ``champion``. Only a promotion moves ``champion`` (:func:`promote`, :func:`rollback`: ``kftune
promote NAME VERSION``, ``kftune rollback NAME``); each move is recorded on the registered model (who, when, why,
from which version) in the tag ``kftune.champion_history``. Where a cluster runs the Kubeflow Model Registry
(``model_registry_url``), each version and each move is mirrored there (:mod:`kftune.tracking.kubeflow_registry`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from kftune.errors import KftuneError
from kftune.tracking.aliases import CHALLENGER, CHAMPION, STORAGE_URI_TAG, who

log = logging.getLogger(__name__)

HISTORY_TAG = "kftune.champion_history"
HISTORY_KEPT = 20  # moves kept in the tag (MLflow limits a tag's value to 8000 characters)
REGISTERED_FILE = "registered.json"
"""In an export: the registered model and version it became."""


@dataclass
class RegistryConfig:
    """Where a model that passes the gate is registered."""

    registered_model_name: str = ""
    """Registered model (in the MLflow registry at the run's tracking URI) that a model passing the gate becomes a new version of, with the alias challenger (the first version: champion); empty: kftune-<task>; 'off': nothing is registered."""  # noqa: E501

    model_registry_url: str = ""
    """Kubeflow Model Registry server (Kubeflow Hub), e.g. https://model-registry-service.kubeflow.svc:8443 or http://model-registry-service.kubeflow.svc:8080: a model registered in MLflow's registry is also registered there (same name, the MLflow version number as version name, its model artifact the exported model and, once published, the published copy), and each move of the champion is mirrored (custom properties kftune.champion, kftune.aliases); its token comes from KF_MODEL_REGISTRY_TOKEN or the pod's service account; unreachable: a warning; empty: MLflow's registry only."""  # noqa: E501

    def name_for(self, task: str) -> str:
        return self.registered_model_name or f"kftune-{task}"

    @property
    def enabled(self) -> bool:
        return self.registered_model_name != "off"


def _client(tracking_uri: str):
    from kftune.tracking.tracker import _client as tracking_client

    return tracking_client(tracking_uri)


def _version_of(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def register(tracking_uri: str, run_id: str, name: str, source: str, tags: dict, description: str = "",
             promotion: dict | None = None, compared_with: str | None = None) -> dict:
    """A new version of registered model ``name`` from the artifacts at ``source`` of run ``run_id``: the alias
    challenger, and champion where the model has none yet, or where evaluate's ``promotion`` says so and the
    champion is still the version it was compared with (``compared_with``; None: there was none). A refused
    promotion is recorded on the version (tag ``kftune.promotion``). Returns {name, version, aliases, promoted,
    tracking_uri}."""
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
    current = _version_of(client, name, CHAMPION)
    if current is None:
        _move_champion(client, name, number, "first version of the registered model", "register")
        aliases.append(CHAMPION)
    elif promotion is not None:
        if promotion.get("promote") and current == compared_with:
            _move_champion(client, name, number, promotion["reason"], "promote")
            aliases.append(CHAMPION)
        else:
            why = promotion["reason"] if not promotion.get("promote") else (
                f"the champion became version {current} after this model was compared with "
                f"{'version ' + compared_with if compared_with else 'none'}; kftune promote decides")
            client.set_model_version_tag(name, number, "kftune.promotion", f"refused: {why}"[:5000])
            log.warning("registry: %s version %s is not promoted: %s", name, number, why)
    log.info("registered %s version %s (%s) at %s", name, number, ", ".join(aliases), tracking_uri)
    return {"name": name, "version": number, "aliases": aliases, "promoted": CHAMPION in aliases,
            "tracking_uri": tracking_uri}


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


def promote(tracking_uri: str, name: str, version: str, reason: str = "", model_registry_url: str = "") -> dict:
    """Make ``version`` of ``name`` the champion; the move is recorded (and mirrored into the Kubeflow Model
    Registry at ``model_registry_url``, where one is named). Returns the move."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.get_model_version(name, str(version))
    except MlflowException as e:
        raise KftuneError(f"registered model {name!r} has no version {version} at {tracking_uri}") from e
    return _mirrored(_move_champion(client, name, str(version), reason or "promoted by hand", "promote"), name,
                     model_registry_url)


def rollback_target(tracking_uri: str, name: str) -> tuple[str, str]:
    """(the champion, the version that held the alias before it) of ``name``."""
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
    return current, earlier[-1]["previous"]


def rollback(tracking_uri: str, name: str, reason: str = "", model_registry_url: str = "") -> dict:
    """Give the champion alias back to the version that held it before the last move; the move is recorded (and
    mirrored into the Kubeflow Model Registry at ``model_registry_url``, where one is named)."""
    current, previous = rollback_target(tracking_uri, name)
    move = _move_champion(_client(tracking_uri), name, previous, reason or f"rolled back from version {current}",
                          "rollback")
    return _mirrored(move, name, model_registry_url)


def _mirrored(move: dict, name: str, model_registry_url: str) -> dict:
    """``move``, with whether the Kubeflow Model Registry took it (``model_registry``) where one is named."""
    if model_registry_url:
        from kftune.tracking.kubeflow_registry import move_champion

        move["model_registry"] = move_champion(model_registry_url, name, move)
    return move


def set_storage_uri(tracking_uri: str, name: str, version: str, uri: str) -> None:
    _client(tracking_uri).set_model_version_tag(name, str(version), STORAGE_URI_TAG, uri)
    log.info("registry: %s version %s published at %s", name, version, uri)


def version_info(tracking_uri: str, name: str, version: str) -> dict:
    """A version's tags (its task, published storage URI, ...) and source."""
    from mlflow.exceptions import MlflowException

    try:
        found = _client(tracking_uri).get_model_version(name, str(version))
    except MlflowException as e:
        raise KftuneError(f"registered model {name!r} has no version {version} at {tracking_uri}") from e
    return {"version": str(found.version), "source": found.source, "tags": dict(found.tags or {})}


def champion_history(tracking_uri: str, name: str) -> list[dict]:
    return _history(_client(tracking_uri), name)
