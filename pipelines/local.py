"""Run a pipeline on this machine with ``kfp.local`` (no cluster) and collect its results."""

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class LocalRunResult:
    """Where a local run put its outputs, and what it measured."""

    run_dir: Path
    model_dir: Path
    export_dir: Path
    """The export step's output, in the task's format: ONNX, or a Hugging Face directory."""
    evaluation: dict
    passed: bool
    seconds: float
    predictions: Path | None = None
    """The predict step's predictions artifact, where the step ran (``predict_input`` given, the gate passed)."""

    def results(self) -> dict:
        """The CLI's ``--results`` document (test-split figures)."""
        from kftune.tasks import task_named

        ev = self.evaluation
        task = task_named(ev["task"])
        keys = task.result_metrics(ev)
        model, baseline = ev["model"], ev["baselines"][ev["baseline"]]
        artifacts = {"model": str(self.model_dir), "exported": str(self.export_dir)}
        if (self.model_dir / "tensorboard").is_dir():
            artifacts["tensorboard"] = str(self.model_dir / "tensorboard")
        tracking_file = self.model_dir / "tracking.json"
        tracking = json.loads(tracking_file.read_text(encoding="utf-8")) if tracking_file.is_file() else None
        registered_file = self.export_dir / "registered.json"
        registered = json.loads(registered_file.read_text(encoding="utf-8")) if registered_file.is_file() else None
        if task.export_format == "onnx":
            artifacts |= {"onnx": str(self.export_dir / "model.onnx"), "onnx_dir": str(self.export_dir)}
        return {
            "task": task.name,
            "model": {k: model[k] for k in keys},
            "baseline": {"name": ev["baseline"], **{k: baseline[k] for k in keys if k in baseline}},
            "baselines": {name: {k: s[k] for k in keys if k in s} for name, s in ev["baselines"].items()},
            "delta_vs_baseline": ev["delta_vs_baseline"],
            **({"delta_intervals": {k: {"ci_low": v["ci_low"], "ci_high": v["ci_high"]}
                                    for k, v in ev["intervals"].items()},
                "resamples": ev["resamples"]} if "intervals" in ev else {}),
            "passed": self.passed,
            **({"champion": {k: v for k, v in ev["champion"].items()
                             if k in ("name", "version", "model", "delta", "intervals", "error")}}
               if "champion" in ev else {}),
            **({"promotion": ev["promotion"]} if "promotion" in ev else {}),
            "test_size": ev["test_size"],
            **task.result_extras(ev),
            **({"tracking": tracking} if tracking else {}),
            **({"registered": registered} if registered else {}),
            "artifacts": artifacts | {"run_dir": str(self.run_dir)}
            | ({"predictions": str(self.predictions)} if self.predictions else {}),
            "seconds": self.seconds,
        }


def local_cluster(**options) -> dict:
    """No cluster volume here: checkpoints stay beside the model and are dropped after success. No
    Secrets either: object-store settings and credentials come from this environment."""
    from kftune.cluster.resources import TrainResources
    from kftune.pipelines.cluster import ClusterOptions, StorageSecrets

    return {"resources": TrainResources(shared_pvc=""), "secrets": StorageSecrets(s3_secret="", gcs_secret=""),
            "options": ClusterOptions(s3_endpoint="", **options)}


def run_pipeline_locally(pipeline, arguments: dict, pipeline_root: str | Path):
    """Run ``pipeline`` with ``kfp.local``'s SubprocessRunner in this interpreter.

    Each step runs as a subprocess of this Python (``use_venv=False``), so kftune and its
    dependencies must be installed here; the components need no pip install of their own.
    """
    from kfp import local

    Path(pipeline_root).mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    with warnings.catch_warnings():
        # kfp.local warns that component images are not "python" images; locally no image is used.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        # Cluster resource requests (GPUs, CPU, memory) mean nothing to a local run.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        return pipeline(**arguments)


def run_finetune_locally(arguments: dict, pipeline_root: str | Path) -> LocalRunResult:
    """Run the finetune pipeline locally and gather model, ONNX and evaluation paths/figures."""
    from kftune.pipelines.finetune import build_finetune_pipeline

    finetune = build_finetune_pipeline(**local_cluster())
    started = time.perf_counter()
    task = run_pipeline_locally(finetune, arguments, pipeline_root)
    return _result(task.outputs, started)


@dataclass
class LocalTuneResult(LocalRunResult):
    best_params: dict | None = None
    search_record: Path | None = None
    search_report: Path | None = None
    search: dict | None = None


def run_tune_locally(arguments: dict, pipeline_root: str | Path) -> LocalTuneResult:
    """Run the tune pipeline locally (trials one at a time: they share this machine's cores)."""
    from kftune.pipelines.tune import build_tune_pipeline

    tune = build_tune_pipeline(**local_cluster(trial_parallelism=1))
    started = time.perf_counter()
    task = run_pipeline_locally(tune, arguments, pipeline_root)
    base = _result(task.outputs, started)
    run_dir = base.run_dir
    records = sorted(run_dir.glob("*/search"))
    reports = sorted(run_dir.glob("*/report"))
    search_dirs = [r.parent for r in records]
    report = next((r for r in reports if r.parent in search_dirs), None)
    return LocalTuneResult(
        **vars(base), best_params=dict(task.outputs["best_params"]),
        search_record=records[0] if records else None, search_report=report,
        search=json.loads(records[0].read_text(encoding="utf-8")) if records else None,
    )


def _result(outputs, started: float) -> LocalRunResult:
    model_dir = Path(outputs["model"].path)
    run_dir = model_dir.parent.parent
    # a step under a condition cannot be a pipeline output: kfp.local writes its artifact under the run's directory
    predictions = run_dir / "predict" / "predictions"
    return LocalRunResult(
        run_dir=run_dir,
        model_dir=model_dir,
        export_dir=Path(outputs["exported_model"].path),
        evaluation=json.loads(outputs["evaluation"].metadata["result"]),
        passed=bool(outputs["passed"]),
        seconds=time.perf_counter() - started,
        predictions=predictions if predictions.is_file() else None,
    )
