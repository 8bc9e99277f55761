"""What each stage records into the pipeline run's MLflow run.

train starts the run (:func:`start_training_run`: settings as params, the dataset as an MLflow dataset input with
its digest, the data report's counts) and ends its part with :func:`end_training_run` (the curves, the run's
address left in the model for the stages after it); the training worker records the curves as it goes
(:mod:`kftune.training.monitors`). evaluate adds the test scores with their intervals, the gate and its reports,
and ends the run (:func:`record_evaluation`); export adds the exported model (:func:`record_export`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from kftune import __version__
from kftune.data.schema import STATS_FILE, splits_sha256
from kftune.tracking.champion import champion_metrics
from kftune.tracking.config import TrackingConfig
from kftune.tracking.registry import REGISTERED_FILE, RegistryConfig, register
from kftune.tracking.tracker import ENV_SPOOL_DIR, SPOOL_SUFFIX, Tracker, pod_image_tags

log = logging.getLogger(__name__)

PENDING_DIR = "tracking-pending"
"""In an artifact: records its stage could not send (``kftune track replay`` on the artifact sends them)."""


def spool_dir(artifact_path: str | Path) -> Path:
    """Where a stage spools: the directory a local run names (``KFTUNE_TRACKING_SPOOL_DIR``), else beside the
    stage's artifact (and moved into it at the end: :func:`keep_spools`)."""
    named = os.environ.get(ENV_SPOOL_DIR)
    return Path(named) if named else Path(str(artifact_path) + "." + PENDING_DIR)


def keep_spools(spools: Path, artifact_dir: str | Path) -> None:
    """Move what a stage could not send into its artifact (a cluster keeps artifacts, not a pod's files)."""
    if os.environ.get(ENV_SPOOL_DIR) or not spools.is_dir():
        return
    files = list(spools.glob(f"*{SPOOL_SUFFIX}"))
    if files:
        target = Path(artifact_dir) / PENDING_DIR
        target.mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.move(str(file), target / file.name)
        log.warning("tracking: %d record file(s) could not be sent; kept in %s (kftune track replay %s)", len(files),
                    target, artifact_dir)
    shutil.rmtree(spools, ignore_errors=True)


def start_training_run(tracking: TrackingConfig, settings: dict, dataset_dir: str | Path, artifact_path: str | Path,
                       tags: dict, run_name: str, parent_run_id: str = "") -> Tracker | None:
    """A new MLflow run for a training (a pipeline run's, or a search trial's under ``parent_run_id``): the
    resolved ``settings`` as params, the dataset with its digest, the data report's counts."""
    tracker = Tracker.start(tracking, run_name, tags, spool_dir(artifact_path), "train", parent_run_id=parent_run_id)
    if tracker is None:
        return None
    tracker.params(settings)
    stats_file = Path(dataset_dir) / STATS_FILE
    stats = json.loads(stats_file.read_text(encoding="utf-8")) if stats_file.is_file() else {}
    counts = {"rows_read": stats.get("rows_read"), "rows_clean": stats.get("rows_clean"),
              "rows_used": stats.get("rows_used"),
              **{f"removed_{k}": v for k, v in stats.get("removed", {}).items()},
              **{f"rows_{k}": v for k, v in stats.get("split_sizes", {}).items()}}
    tracker.metrics({f"data_{k}": v for k, v in counts.items() if v is not None})
    # MLflow's dataset digest: the model card's data digest of the same splits (test excluded: train has no test)
    tracker.dataset(f"{stats.get('task', 'dataset')}-train-validation", splits_sha256(dataset_dir, None)[:16],
                    str(stats.get("source", dataset_dir)), context="training",
                    profile={"split_sizes": stats.get("split_sizes", {})})
    return tracker


def end_training_run(tracker: Tracker | None, model_dir: str | Path, history: dict, curves: str | Path) -> None:
    """The training's part is done: the curves and history as artifacts, the run's address left in the model."""
    if tracker is None:
        return
    tracker.artifact(curves, "reports")
    tracker.artifact(Path(model_dir) / "training_history.json", "reports")
    tracker.tags({"best_epoch": history["best_epoch"], "precision": history.get("precision", "")})
    tracker.write(model_dir)
    keep_spools(spool_dir(model_dir), model_dir)


def fail_training_run(tracker: Tracker | None, error: BaseException) -> None:
    if tracker is not None:
        text = str(error).strip()
        tracker.tags({"error": text.splitlines()[0][:500] if text else type(error).__name__})
        tracker.finish("FAILED")


def record_evaluation(model_dir: str | Path, result: dict, config, reports: dict[str, str | Path],
                      artifact_path: str | Path) -> Tracker | None:
    """The test scores (with their intervals), the gate's verdict and checks, and the reports, into the run that
    trained ``model_dir``; the run ends here (export, after it, adds its model to the ended run)."""
    from kftune.tasks import task_named

    tracker = Tracker.from_artifact(model_dir, spool_dir(artifact_path), "evaluate")
    if tracker is None:
        return None
    tracker.params({f"evaluate.{k}": v for k, v in asdict(config).items()})
    flat = task_named(result["task"]).flat_metrics(result) | champion_metrics(result)
    tracker.metrics({f"test_{k}": v for k, v in flat.items()})
    tracker.tags({"gate": "passed" if result["passed"] else "failed",
                  "gate.failed_checks": ",".join(c for c, ok in result.get("checks", {}).items() if not ok)}
                 | pod_image_tags("evaluate"))
    if "promotion" in result:
        tracker.tags({"promotion": "promote" if result["promotion"]["promote"] else "keep champion",
                      "promotion.reason": result["promotion"]["reason"][:5000],
                      **({"champion_version": result["champion"]["version"]}
                         if result.get("champion", {}).get("version") else {})})
    for name, path in reports.items():
        tracker.artifact(path, name)
    # the whole result, the confusion matrix (or the task's equivalent) and the intervals included
    tracker.text(json.dumps(result, indent=2, default=str), "reports/evaluation.json")
    tracker.finish("FINISHED")
    return tracker


def record_export(model_dir: str | Path, export_dir: str | Path, report: dict, artifact_path: str | Path,
                  evaluation: dict | None = None, registry: RegistryConfig | None = None) -> dict | None:
    """The exported model (and its report's parity and sizes) into the run that trained ``model_dir``; when the
    gate passed, the export registered as a new version (:mod:`kftune.tracking.registry`; also in the Kubeflow Model
    Registry where ``registry.model_registry_url`` names one: :mod:`kftune.tracking.kubeflow_registry`). Returns the
    version registered ({name, version, aliases, tracking_uri[, model_registry_url]}, also left in the export as
    registered.json), or None."""
    tracker = Tracker.from_artifact(model_dir, spool_dir(artifact_path), "export")
    if tracker is None:
        return None
    tracker.metrics({f"export_parity_{k}": v for k, v in report.get("parity", {}).items()}
                    | {f"export_size_mb_{k}": v / 2**20 for k, v in report.get("size_bytes", {}).items()})
    tracker.artifact(export_dir, "model")
    tracker.tags({"export.format": report.get("format", "")} | pod_image_tags("export"))
    if not (evaluation and evaluation.get("passed") and registry is not None and registry.enabled):
        return None
    if tracker.pending():
        log.warning("registry: the export is not yet in the tracking server (its records wait in %s); not registered",
                    tracker.spool)
        return None
    from kftune.tasks import task_named

    primary = evaluation.get("primary_metric") or task_named(evaluation["task"]).primary
    tags = {"task": evaluation["task"], "gate": "passed", "test_size": evaluation.get("test_size", ""),
            "model_card": "model/README.md", "kftune.version": __version__}
    if primary in evaluation.get("model", {}):
        tags[f"test_{primary}"] = evaluation["model"][primary]
    try:
        source = f"{tracker.client.get_run(tracker.run_id).info.artifact_uri}/model"
        registered = register(tracker.uri, tracker.run_id, registry.name_for(evaluation["task"]), source, tags,
                              promotion=evaluation.get("promotion"),
                              compared_with=(evaluation.get("champion") or {}).get("version"))
    except Exception as e:  # noqa: BLE001 -- the export itself is done and sound
        log.warning("registry: could not register the export (%s); register it later from run %s", e,
                    tracker.run_id)
        return None
    if registry.model_registry_url:
        from kftune.tracking.kubeflow_registry import register as register_kubeflow

        opset = report.get("opset")
        mirrored = register_kubeflow(registry.model_registry_url, registered, source, tags, report.get("format", ""),
                                     model_format_version=str(opset) if opset else "", run_id=tracker.run_id,
                                     description=f"kftune {evaluation['task']} model, MLflow run {tracker.run_id}")
        registered["model_registry_url"] = mirrored["model_registry_url"] if mirrored else ""
    (Path(export_dir) / REGISTERED_FILE).write_text(json.dumps(registered, indent=2), encoding="utf-8")
    tracker.tags({"registered_model": registered["name"], "registered_version": registered["version"]})
    return registered


def record_publish(export_dir: str | Path, version_uri: str) -> None:
    """The storage URI of a published export onto the registry version it became (tag ``kftune.storage_uri``:
    what ``kftune promote --deploy-name`` serves), and onto its model artifact in the Kubeflow Model Registry where
    export registered it there; nothing for an export that was not registered."""
    from kftune.tracking.registry import set_storage_uri

    file = Path(export_dir) / REGISTERED_FILE
    if not file.is_file():
        return
    registered = json.loads(file.read_text(encoding="utf-8"))
    try:
        set_storage_uri(registered["tracking_uri"], registered["name"], registered["version"], version_uri)
    except Exception as e:  # noqa: BLE001 -- the published copy is sound; the tag can be set by hand
        log.warning("registry: could not record %s on %s version %s (%s)", version_uri, registered["name"],
                    registered["version"], e)
    if registered.get("model_registry_url"):
        from kftune.tracking.kubeflow_registry import set_storage_uri as set_kubeflow_storage_uri

        set_kubeflow_storage_uri(registered["model_registry_url"], registered["name"], registered["version"],
                                 version_uri)
