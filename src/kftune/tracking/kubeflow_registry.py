"""The Kubeflow Model Registry (Kubeflow Hub) as a second registry, for clusters that run one.

MLflow's registry (:mod:`kftune.tracking.registry`) decides; this module mirrors what it decided into the Kubeflow
Model Registry at ``model_registry_url``, through the official client (``model-registry``): export's new version
(:func:`register`: the same registered model name, the MLflow version number as the version name, the exported
model's URI as its model artifact, the test score, gate, run and aliases as custom properties), publish's storage
URI (:func:`set_storage_uri`: the model artifact's URI becomes the published copy, which KServe serves) and each move
of the champion (:func:`move_champion`: the registered model's custom property ``kftune.champion`` names the
version, each version's ``kftune.aliases`` lists its aliases). Nothing here fails a stage: a Kubeflow registry that
cannot be reached, or refuses, is a warning, as a tracking server that cannot be reached is.

Credentials: a bearer token from ``KF_MODEL_REGISTRY_TOKEN`` (the token itself), else the client's own lookup (the
file named by ``KF_PIPELINES_SA_TOKEN_PATH``, else the pod's service account token); an ``http://`` URL needs none.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import warnings

from kftune.tracking.aliases import CHALLENGER, CHAMPION, STORAGE_URI_TAG, who

log = logging.getLogger(__name__)

ENV_TOKEN = "KF_MODEL_REGISTRY_TOKEN"  # noqa: S105 -- the name of the variable, not a token
"""The bearer token for the Kubeflow Model Registry (else the client reads the pod's service account token)."""
CHAMPION_PROPERTY = "kftune.champion"
"""On the registered model: the version name of its champion (as MLflow's alias ``champion``)."""
CHALLENGER_PROPERTY = "kftune.challenger"
"""On the registered model: the version name of its latest challenger (as MLflow's alias ``challenger``)."""
ALIASES_PROPERTY = "kftune.aliases"
"""On a version: its MLflow aliases, comma-separated (``challenger,champion``; empty once it holds none)."""
MODEL_FORMATS = {"onnx": "onnx", "huggingface": "huggingface"}
"""An export's format (its report's ``format``) as the model artifact's ``model_format_name``."""


def _run(coroutine):
    # The client's default runner applies nest_asyncio2 to the whole process; kftune calls it from plain
    # synchronous code, where a fresh event loop per call does (each call opens and closes its own HTTP session).
    return asyncio.run(coroutine)


def connect(url: str):
    """A client of the Kubeflow Model Registry at ``url`` (``https://host:8443``, ``http://host:8080``); the
    client's first request (a page of registered models) checks that it answers."""
    from model_registry import ModelRegistry

    token = os.environ.get(ENV_TOKEN) or None
    with warnings.catch_warnings():
        # "User access token is missing": expected for an http:// registry inside the cluster
        warnings.simplefilter("ignore", UserWarning)
        return ModelRegistry(url, author=who(), user_token=token, async_runner=_run)


def _mirror(client, name: str, alias: str, version: str) -> None:
    """Give ``alias`` of registered model ``name`` to ``version``: the registered model's property names it, the
    version's ``kftune.aliases`` gains it and the version that held it before loses it."""
    model = client.get_registered_model(name)
    properties = dict(model.custom_properties or {})
    previous = properties.get(f"kftune.{alias}")
    properties[f"kftune.{alias}"] = version
    model.custom_properties = properties
    client.update(model)
    _set_alias(client, name, version, alias, present=True)
    if previous and previous != version:
        _set_alias(client, name, str(previous), alias, present=False)


def _set_alias(client, name: str, version: str, alias: str, present: bool) -> None:
    found = client.get_model_version(name, version)
    if found is None:
        log.warning("model registry: %s has no version %s to %s alias %s", name, version,
                    "give" if present else "take", alias)
        return
    properties = dict(found.custom_properties or {})
    aliases = [a for a in str(properties.get(ALIASES_PROPERTY, "")).split(",") if a and a != alias]
    if present:
        aliases.append(alias)
    properties[ALIASES_PROPERTY] = ",".join(sorted(aliases))
    found.custom_properties = properties
    client.update(found)


def register(url: str, registered: dict, source: str, tags: dict, model_format: str,
             model_format_version: str = "", run_id: str = "", description: str = "") -> dict | None:
    """The version MLflow's registry made (``registered``: {name, version, aliases}, from
    :func:`kftune.tracking.registry.register`) as a version of the same registered model in the Kubeflow Model
    Registry at ``url``: its model artifact at ``source`` in ``model_format``, ``tags`` (task, test score, gate,
    kftune version) and the MLflow run as custom properties, and its aliases mirrored. Returns {model_registry_url,
    version} or, where the registry cannot be reached or refuses, None after a warning."""
    name, version = registered["name"], str(registered["version"])
    properties = {k: v if isinstance(v, (bool, int, float)) else str(v) for k, v in tags.items()}
    properties |= {"mlflow.run_id": run_id, "mlflow.tracking_uri": registered.get("tracking_uri", ""),
                   "mlflow.source": source}
    try:
        client = connect(url)
        client.register_model(name, source, version=version, model_format_name=MODEL_FORMATS.get(model_format,
                              model_format), model_format_version=model_format_version,
                              version_description=description, metadata=properties)
        for alias in (CHALLENGER, CHAMPION):
            if alias in registered.get("aliases", []):
                _mirror(client, name, alias, version)
        if CHAMPION in registered.get("aliases", []):
            _record_move(client, name, version, "promote" if registered.get("promoted") else "register",
                         "as in the MLflow registry")
    except Exception as e:  # noqa: BLE001 -- MLflow's registry holds the version; this one is a mirror
        log.warning("model registry: could not register %s version %s at %s (%s); MLflow's registry has it", name,
                    version, url, e)
        return None
    log.info("model registry: registered %s version %s (%s) at %s", name, version,
             ", ".join(registered.get("aliases", [])), url)
    return {"model_registry_url": url, "version": version}


def _record_move(client, name: str, version: str, action: str, reason: str) -> None:
    stamp = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} by {who()}: {reason}"
    found = client.get_model_version(name, version)
    if found is not None:
        found.custom_properties = dict(found.custom_properties or {}) | {f"kftune.{action}": stamp[:5000]}
        client.update(found)


def move_champion(url: str, name: str, move: dict) -> bool:
    """Mirror a move of MLflow's champion alias (``move``: {action, version, reason}, from
    :func:`kftune.tracking.registry.promote` or ``rollback``) into the Kubeflow Model Registry at ``url``. Returns
    whether it was mirrored (a warning where not)."""
    version = str(move["version"])
    try:
        client = connect(url)
        _mirror(client, name, CHAMPION, version)
        _record_move(client, name, version, move["action"], move.get("reason", ""))
    except Exception as e:  # noqa: BLE001 -- the move is done in MLflow's registry, which deploy reads
        log.warning("model registry: could not move %s's champion to version %s at %s (%s); MLflow's registry has "
                    "the move", name, version, url, e)
        return False
    log.info("model registry: %s champion is version %s at %s", name, version, url)
    return True


def set_storage_uri(url: str, name: str, version: str, uri: str) -> bool:
    """Point ``version``'s model artifact at its published copy ``uri`` (and record it as the version's
    ``kftune.storage_uri``). Returns whether it was recorded (a warning where not)."""
    try:
        client = connect(url)
        artifact = client.get_model_artifact(name, str(version))
        if artifact is None:
            raise LookupError(f"{name} version {version} has no model artifact")
        artifact.uri = uri
        client.update(artifact)
        found = client.get_model_version(name, str(version))
        found.custom_properties = dict(found.custom_properties or {}) | {STORAGE_URI_TAG: uri}
        client.update(found)
    except Exception as e:  # noqa: BLE001 -- the published copy is sound; MLflow's registry has its URI
        log.warning("model registry: could not record %s on %s version %s at %s (%s)", uri, name, version, url, e)
        return False
    log.info("model registry: %s version %s published at %s", name, version, uri)
    return True
