"""One trial of a hyperparameter search: a real training run with some options changed.

:func:`run_trial` trains with torchrun (``launch_training``, as the train component does)
and returns what the search needs: the best epoch's validation scores, the per-epoch scores,
how long it took and whether it finished, was pruned or failed. A failed trial is a result,
not an exception, so the search goes on and reports it.

Katib runs this module as its trial command; it prints the scores in the format of Katib's
StdOut metrics collector (``val_f1_macro=0.8512``)::

    python -m kftune.components.tune.trial --config train_config.json --dataset DIR \
        --output DIR --metric f1_macro --set learning_rate=3e-5 --set warmup_ratio=0.1
"""

from __future__ import annotations

import argparse
import ast
import logging
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from kftune.errors import KftuneError
from kftune.tracking.config import TrackingConfig
from kftune.tracking.stages import start_training_run
from kftune.training.config import BEST_METRICS, Launch, TrainConfig
from kftune.training.launch import launch_training
from kftune.training.search_space import apply_hyperparameters

log = logging.getLogger(__name__)

COMPLETE, PRUNED, FAILED = "complete", "pruned", "failed"


def run_trial(
    base: TrainConfig,
    params: dict,
    dataset_dir: str | Path,
    output_dir: str | Path,
    number: int = 0,
    pruning: str = "",
    keep_model: bool = False,
    launch: Launch | None = None,
    tracking: TrackingConfig | None = None,
    parent_run_id: str = "",
) -> dict:
    """Train ``base`` with ``params`` applied (processes per ``launch``); return the trial's result. With
    ``tracking`` the trial is recorded as an MLflow run, a child of the search's run ``parent_run_id``.

    Never raises KftuneError: a failed trial is a result too.
    """
    started = time.perf_counter()
    tracker = None
    result = {"number": number, "params": dict(params), "state": FAILED, "score": None, "metrics": {},
              "epoch_scores": [], "seconds": 0.0, "error": ""}
    output_dir = Path(output_dir)
    try:
        # values that went through KFP (a JSON struct) arrive as floats: 8.0 for a batch size
        config = replace(apply_hyperparameters(base, params), pruning=pruning)
        result["params"] = {name: getattr(config, name) for name in params}
        log.info("trial %d: %s", number, ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults")
        if tracking is not None:
            tracker = start_training_run(tracking, asdict(config), dataset_dir, output_dir, {"trial": number},
                                         f"trial {number}", parent_run_id=parent_run_id)
        history = launch_training(config, dataset_dir, output_dir, launch, env=tracker.env() if tracker else None)
    except (KftuneError, TypeError, ValueError) as e:
        result["error"] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.warning("trial %d failed: %s", number, result["error"])
    else:
        best = history["epochs"][history["best_epoch"] - 1]
        metric = history["best_metric"]
        result.update(
            state=PRUNED if "pruned_at_epoch" in history else COMPLETE,
            score=history["best_score"],
            # every validation score: Katib reads the objective (val_<metric_for_best_model>) and the task's others
            metrics={k: v for k, v in best.items() if k.startswith("val_") and isinstance(v, (int, float))},
            epoch_scores=[e[f"val_{metric}"] for e in history["epochs"]],
            best_epoch=history["best_epoch"],
        )
        log.info("trial %d %s: best val %s %.4f (epoch %d)", number, result["state"], metric, result["score"],
                 history["best_epoch"])
    finally:
        result["seconds"] = time.perf_counter() - started
        if tracker is not None:
            tracker.tags({"trial.state": result["state"], **({"error": result["error"]} if result["error"] else {})})
            tracker.finish({COMPLETE: "FINISHED", PRUNED: "KILLED"}.get(result["state"], "FAILED"))
        if not keep_model:
            shutil.rmtree(output_dir, ignore_errors=True)
    return result


def parse_assignments(items: list[str]) -> dict:
    """``["learning_rate=3e-5", "per_device_train_batch_size=16"]`` -> typed values."""
    params = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise KftuneError(f"--set {item!r}: expected NAME=VALUE")
        try:
            params[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            params[name] = text
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one hyperparameter-search trial and print its scores "
                                     "for Katib's StdOut metrics collector.")
    parser.add_argument("--config", required=True, type=Path, help="base TrainConfig as JSON")
    parser.add_argument("--dataset", required=True, type=Path, help="preprocessed dataset directory")
    parser.add_argument("--output", required=True, type=Path, help="where the trial's model is written")
    parser.add_argument("--metric", default="f1_macro", choices=BEST_METRICS)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a searched option")
    parser.add_argument("--keep-model", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    base = replace(TrainConfig.from_json(args.config), metric_for_best_model=args.metric)
    result = run_trial(base, parse_assignments(args.set), args.dataset, args.output, keep_model=args.keep_model)
    if result["state"] == FAILED:
        print(f"kftune trial failed: {result['error']}", file=sys.stderr)
        return 1
    for name, value in result["metrics"].items():
        print(f"{name}={value:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
