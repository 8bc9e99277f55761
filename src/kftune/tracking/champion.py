"""Champion and challenger: a model that passes the gate replaces the one in production only when it is not worse.

Evaluate looks up the ``champion`` of the registered model the candidate would join (:func:`fetch_champion`: the
registry at the tracking URI its training run recorded into, the registered model its settings name), downloads
that version's export and has the task score it on the candidate's own test split
(:meth:`~kftune.tasks.base.Task.compare_with_champion`): the champion's scores, the candidate's gain over it, and
the 95% interval of that gain from the paired bootstrap over the same test examples. :func:`promotion` decides:
a candidate that passed the gate is promoted when there is no champion yet, or when the lower bound of its gain's
interval over the champion, in the task's primary metric, is at least ``-max_regression``. Export registers every
model that passed the gate (alias ``challenger``) and moves ``champion`` only on a promotion; deploy serves only a
promoted model. Where the champion cannot be read or scored on this data (another label set, another tokenizer
for per-token tags), nothing is promoted automatically and the reason says so: ``kftune promote`` decides.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kftune.tracking.registry import CHAMPION, RegistryConfig
from kftune.tracking.tracker import TRACKING_FILE

log = logging.getLogger(__name__)


class NotComparable(Exception):
    """The champion cannot be scored on the candidate's test split (the reason, for the report)."""


def fetch_champion(model_dir: str | Path, registry: RegistryConfig, task: str, into: str | Path) -> dict | None:
    """The champion of the registered model the candidate in ``model_dir`` would join, its export downloaded into
    ``into``: ``{name, version, source, tracking_uri, dir}``, or with ``error`` instead of ``dir`` where it could
    not be read. None where there is none to compare with: the candidate was not tracked, the registry is off,
    or the registered model has no champion yet."""
    import json

    file = Path(model_dir) / TRACKING_FILE
    if not registry.enabled or not file.is_file():
        return None
    uri = json.loads(file.read_text(encoding="utf-8"))["tracking_uri"]
    name = registry.name_for(task)
    champion = {"name": name, "tracking_uri": uri}
    try:
        from mlflow.artifacts import download_artifacts
        from mlflow.exceptions import MlflowException

        from kftune.tracking.registry import _client

        client = _client(uri)
        try:
            version = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None  # no such registered model, or no champion yet
            raise
        champion |= {"version": str(version.version), "source": version.source,
                     "run_id": version.run_id or "", "task": (version.tags or {}).get("task", "")}
        if champion["task"] and champion["task"] != task:
            champion["error"] = f"the champion is a {champion['task']} model, the candidate a {task} one"
            return champion
        target = Path(into)
        target.mkdir(parents=True, exist_ok=True)
        champion["dir"] = download_artifacts(artifact_uri=version.source, dst_path=str(target), tracking_uri=uri)
    except Exception as e:  # noqa: BLE001 -- the candidate's evaluation stands; only its promotion waits
        champion["error"] = f"could not read the champion from {uri}: {str(e).strip().splitlines()[0][:300]}"
        log.warning("champion: %s", champion["error"])
    return champion


def promotion(result: dict, champion: dict | None, registry: RegistryConfig, tracked: bool,
              max_regression: float) -> dict:
    """Whether the candidate of ``result`` becomes the champion: ``{promote, reason, max_regression}``."""
    from kftune.tasks import task_named

    decision = {"promote": False, "max_regression": max_regression}
    if not result["passed"]:
        return decision | {"reason": "the gate failed: a model that fails it is neither registered nor promoted"}
    if not (tracked and registry.enabled):
        return decision | {"promote": True, "reason": "no model registry (tracking or the registry is off): the "
                                                      "model that passes the gate is deployed"}
    decision["registry"] = True  # the model is to be registered: it is deployed only once it is the champion
    if champion is None:
        return decision | {"promote": True, "reason": "no champion yet: the first version that passes the gate "
                                                      "becomes the champion"}
    version = champion.get("version", "?")
    if "error" in champion:
        return decision | {"reason": f"champion version {version} could not be compared ({champion['error']}); "
                                     f"kftune promote {champion['name']} VERSION decides"}
    primary = result.get("primary_metric") or task_named(result["task"]).primary
    gain, interval = champion["delta"][primary], champion["intervals"][primary]
    low, high = interval["ci_low"], interval["ci_high"]
    said = (f"{primary} gain over champion version {version}: {gain:+.4f}, 95% interval [{low:+.4f}, {high:+.4f}] "
            f"(paired bootstrap, {result['test_size']} test examples)")
    if low >= -max_regression:
        return decision | {"promote": True, "reason": f"{said}; lower bound >= -{max_regression}: not worse, promoted"}
    return decision | {"reason": f"{said}; lower bound below -{max_regression}: may be worse than the champion, "
                                 "which stays"}


def champion_metrics(result: dict) -> dict[str, float]:
    """Scalars of the champion comparison for a KFP ``Metrics`` artifact and the MLflow run: the champion's
    scores, the gains over it with their interval bounds, and ``promote`` (1 or 0)."""
    flat = {}
    champion = result.get("champion") or {}
    for metric, value in champion.get("model", {}).items():
        flat[f"champion_{metric}"] = value
        flat[f"delta_vs_champion_{metric}"] = champion["delta"][metric]
        if metric in champion.get("intervals", {}):
            flat[f"delta_vs_champion_{metric}_ci_low"] = champion["intervals"][metric]["ci_low"]
            flat[f"delta_vs_champion_{metric}_ci_high"] = champion["intervals"][metric]["ci_high"]
    if "promotion" in result:
        flat["promote"] = float(result["promotion"]["promote"])
    return flat


def champion_rows(result: dict, keys: list[str]) -> list[tuple]:
    """The summary table's rows for the champion: its scores, the candidate's gain over it and that gain's 95%
    interval (none where there is no champion to compare with)."""
    champion = result.get("champion") or {}
    if "model" not in champion:
        return []
    version, intervals = champion.get("version", "?"), champion.get("intervals", {})
    return [(f"champion (version {version})", *(champion["model"].get(k) for k in keys)),
            (f"delta vs champion {version}", *(champion["delta"].get(k) for k in keys)),
            *((f"delta vs champion, 95% interval: {bound.removeprefix('ci_')}",
               *(intervals.get(k, {}).get(bound, "") for k in keys)) for bound in ("ci_low", "ci_high"))]


def deploys(result: dict, registered: dict | None) -> bool:
    """Whether the exported model of ``result`` is the one to serve: the champion once registered, or, where no
    registry is used, a model that passed the gate. A model meant for the registry that could not be registered
    (the server went away) is not deployed."""
    decision = result.get("promotion") or {"promote": bool(result.get("passed"))}
    if registered is not None:
        return bool(registered.get("promoted"))
    return bool(decision["promote"]) and not decision.get("registry")
