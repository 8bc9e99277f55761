"""Hyperparameter search: grid and random plans for a pipeline fan-out, and an Optuna TPE study.

Grid and random search decide every trial up front (:func:`plan_trials`), so the pipeline can
run them side by side with ``dsl.ParallelFor`` and pick the best when they are all back
(:func:`select_best`). Bayesian search needs each result before choosing the next trial, so
:func:`optuna_search` runs a whole Optuna study (TPE sampler, median pruning of weak trials
from their per-epoch validation scores) in one task.

All three are reproducible: the same seed gives the same trials (training itself is seeded).
With ``include_defaults`` the first trial is the base configuration itself (the searched
options at their defaults), so the search reports how far it got beyond the default recipe
and never returns a worse configuration than that one.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, replace
from pathlib import Path

from kftune.components.tune.config import SearchConfig
from kftune.components.tune.trial import COMPLETE, FAILED, PRUNED, run_trial
from kftune.errors import ConfigError, KftuneError
from kftune.tracking.config import TrackingConfig
from kftune.tracking.stages import spool_dir
from kftune.training.config import Launch, TrainConfig
from kftune.training.pruning import PruningTarget, journal_storage
from kftune.training.search_space import SearchSpace

log = logging.getLogger(__name__)

STUDY_FILE = "study.journal"


def plan_search(settings: SearchConfig, base: TrainConfig) -> tuple[TrainConfig, list[dict]]:
    """Check a search before any trial starts; return the trials' base configuration and, for a
    grid/random search in the pipeline, the planned trials ([] otherwise).

    Trials are scored on the validation split, so they train on the training split alone
    whatever ``train_on`` says (it applies to the final model).
    """
    settings.validate()
    base.validate()
    space = settings.space(base)
    if base.train_on != "train":
        log.info("search trials train on the training split; train_on=%s applies to the final model", base.train_on)
        base = replace(base, train_on="train")
    trials = []
    if settings.search_backend == "pipeline" and settings.algorithm in ("grid", "random"):
        defaults = default_params(space, base) if settings.include_defaults else None
        trials = plan_trials(space, settings.algorithm, settings.max_trials, base.seed, defaults)
    return base, trials


def default_params(space: SearchSpace, base: TrainConfig) -> dict:
    """The base configuration's values of the searched options."""
    return {name: getattr(base, name) for name in space.names}


def plan_trials(
    space: SearchSpace, algorithm: str, max_trials: int, seed: int, defaults: dict | None = None
) -> list[dict]:
    """The trials of a grid or random search: ``[{"number": 0, "params": {...}}, ...]``.

    Grid: every combination in order, or, when the grid has more points than ``max_trials``,
    a seeded random subset of them (kept in grid order). Random: ``max_trials`` seeded draws,
    without repeats. ``defaults`` (if given) is trial 0 and counts against the budget.
    """
    rng = random.Random(seed)
    chosen = [dict(defaults)] if defaults else []
    budget = max_trials - len(chosen)
    if algorithm == "grid":
        grid = [p for p in space.grid() if p not in chosen]
        if len(grid) > budget:
            log.warning("the grid has %d points, more than the %d trials left in the budget: trying a seeded "
                        "random %d of them", len(grid), budget, budget)
            grid = [grid[i] for i in sorted(rng.sample(range(len(grid)), budget))]
        chosen += grid
    elif algorithm == "random":
        attempts = 0
        while len(chosen) < max_trials and attempts < 100 * max_trials:
            attempts += 1
            params = space.sample(rng)
            if params not in chosen:
                chosen.append(params)
    else:
        raise ConfigError(f"plan_trials handles grid and random search, not {algorithm!r}")
    return [{"number": i, "params": params} for i, params in enumerate(chosen)]


def better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


def select_best(results: list[dict], direction: str) -> dict:
    """The completed trial with the best score (the earliest among equals)."""
    results = sorted(results, key=lambda r: r["number"])
    complete = [r for r in results if r["state"] == COMPLETE]
    if not complete:
        failures = "; ".join(f"trial {r['number']}: {r['error'] or r['state']}" for r in results)
        raise KftuneError(f"no trial of the search completed ({failures})")
    best = complete[0]
    for r in complete[1:]:
        if better(r["score"], best["score"], direction):
            best = r
    return best


def optuna_search(
    base: TrainConfig,
    space: SearchSpace,
    dataset_dir: str | Path,
    work_dir: str | Path,
    max_trials: int,
    seed: int,
    direction: str,
    include_defaults: bool = True,
    prune: bool = True,
    n_startup_trials: int = 2,
    launch: Launch | None = None,
    tracking: TrackingConfig | None = None,
) -> dict:
    """Run an Optuna study whose trials train for real; return its trials and best trial.

    TPE proposes each trial from the results so far (after ``n_startup_trials`` random ones,
    seeded); a trial whose validation score after an epoch falls below the median of earlier
    trials at that epoch is pruned (``MedianPruner``), which the training loop learns through
    the study's journal file.
    """
    import optuna

    from kftune.tasks import resolve_task

    base = resolve_task(base, dataset_dir)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    storage_path = work_dir / STUDY_FILE
    name = f"kftune-{seed}"
    storage = journal_storage(str(storage_path))
    target = PruningTarget(str(storage_path), name, -1, n_startup_trials=n_startup_trials)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials),
        pruner=target.pruner() if prune else optuna.pruners.NopPruner(),
    )
    if include_defaults:
        study.enqueue_trial(default_params(space, base), skip_if_exists=True)
    parent = search_run(tracking, "tpe", base, work_dir, max_trials=max_trials, seed=seed, direction=direction)
    results = []
    for _ in range(max_trials):
        trial = study.ask()
        params = space.suggest(trial)
        pruning = PruningTarget(**{**asdict(target), "trial_id": trial._trial_id}).to_json() if prune else ""
        result = run_trial(base, params, dataset_dir, work_dir / f"trial-{trial.number}", trial.number, pruning,
                           launch=launch, tracking=tracking, parent_run_id=parent.run_id if parent else "")
        if result["state"] == COMPLETE:
            study.tell(trial, result["score"])
        elif result["state"] == PRUNED:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        results.append(result)
    record = summary("tpe", base.metric_for_best_model, direction, results, param_importance(study))
    end_search_run(parent, record)
    return record


def search_run(tracking: TrackingConfig | None, algorithm: str, base: TrainConfig, work_dir: Path, **settings):
    """The search's MLflow run (its trials are its children), or None where tracking is off."""
    if tracking is None or not tracking.enabled:
        return None
    from kftune.tracking.tracker import Tracker

    parent = Tracker.start(tracking, f"search {algorithm} {base.task}", {"task": base.task, "search": algorithm},
                           spool_dir(work_dir), "search")
    if parent is not None:
        parent.params({"algorithm": algorithm, "metric": base.metric_for_best_model, **settings})
    return parent


def end_search_run(parent, record: dict) -> None:
    if parent is None:
        return
    best = record.get("best") or {}
    parent.metrics({f"best_val_{record['metric']}": best.get("score"),
                    **{f"trials_{k}": v for k, v in counts(record["trials"]).items()}})
    parent.params({f"best.{k}": v for k, v in best.get("params", {}).items()})
    parent.text(json.dumps(record, indent=2, default=str), "search/search.json")
    parent.finish("FINISHED")


def param_importance(study) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA), or {} when it cannot tell (too few trials)."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2 or len({json.dumps(t.params, sort_keys=True) for t in complete}) < 2:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError) as e:
        log.info("no parameter importances: %s", e)
        return {}


def summary(algorithm: str, metric: str, direction: str, results: list[dict], importance: dict | None = None) -> dict:
    """The search's record: every trial, the best one and, when computed, parameter importances."""
    return {"algorithm": algorithm, "metric": metric, "direction": direction,
            "trials": sorted(results, key=lambda r: r["number"]), "best": select_best(results, direction),
            "importance": importance or {}}


def counts(results: list[dict]) -> dict[str, int]:
    return {state: sum(r["state"] == state for r in results) for state in (COMPLETE, PRUNED, FAILED)}


def record_from_katib(outcome: dict, algorithm: str, metric: str, direction: str) -> dict:
    """A Katib run (``katib.run_experiment``'s result) as the same search record the other searches write."""
    states = {"Succeeded": COMPLETE, "EarlyStopped": PRUNED}
    trials = []
    for number, t in enumerate(outcome["trials"]):
        state = states.get(t["condition"], FAILED if t["condition"] in ("Failed", "MetricsUnavailable", "Killed")
                           else t["condition"].lower())
        error = f"{t['reason']}: {t['message']}" if state == FAILED else ""
        trials.append({"number": number, "name": t["name"], "params": t["params"], "state": state,
                       "score": t["score"], "metrics": t["metrics"], "epoch_scores": [], "seconds": 0.0,
                       "error": error})
    best = next((t for t in trials if t["params"] == outcome["best_params"] and t["state"] == COMPLETE), None)
    if best is None:  # Katib's optimal trial missing from the listing (listing is best effort)
        best = {"number": len(trials), "name": outcome.get("best_trial"), "params": outcome["best_params"],
                "state": COMPLETE, "score": outcome["best_score"], "metrics": outcome.get("best_metrics", {}),
                "epoch_scores": [], "seconds": 0.0, "error": ""}
        trials.append(best)
    return {"algorithm": f"katib {algorithm}", "metric": metric, "direction": direction, "trials": trials,
            "best": best, "importance": {}, "experiment": outcome["experiment"]}
