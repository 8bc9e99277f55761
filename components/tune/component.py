"""KFP components of the hyperparameter search (thin doors over search.py, trial.py, katib.py and
report.py; their settings come from SearchConfig, TrainConfig, Launch and TrainResources).

- ``plan_search``: checks the search and the base configuration, and plans grid/random trials;
- ``search_trial``: one trial (a real training run), fanned out with ``dsl.ParallelFor``;
- ``select_best``: fans the trial results in (``dsl.Collected``) and picks the best;
- ``optuna_search``: a whole Optuna TPE study with median pruning, in one task;
- ``katib_search``: a Katib ``Experiment`` on the cluster, each trial a pod of the tune image;
- ``report_search``: whichever of the three ran, its search record (JSON) becomes the best
  parameters and score, the record as an artifact, an HTML report with plots, a Markdown
  table and Metrics.
"""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from kftune.cluster.images import ImageScheme
from kftune.cluster.resources import TrainResources
from kftune.components.tune.config import SearchConfig
from kftune.settings.signatures import with_settings
from kftune.tracking.config import TrackingConfig
from kftune.training.config import Launch, TrainConfig


@with_settings(SearchConfig, TrainConfig, TrackingConfig)
def plan_search(dataset: Input[Dataset]) -> NamedTuple("PlanOutputs", [("train_config", str), ("trials", List[dict])]):
    """Check the search and the base training configuration; plan the trials of a grid/random search.

    Args:
        dataset: Train and validation splits from preprocess (which say the task, where task is auto); no test split.

    Returns:
        train_config: The base TrainConfig as JSON (trials train on the training split).
        trials: The planned trials [{"number", "params", "parent_run_id"}] (empty for tpe and for katib); parent_run_id: the search's MLflow run, whose children the trials are ("" untracked).
    """
    values = dict(locals())
    import json
    import tempfile
    from collections import namedtuple
    from dataclasses import asdict

    from kftune.components.tune.config import SearchConfig
    from kftune.components.tune.search import plan_search as plan
    from kftune.components.tune.search import search_run
    from kftune.settings.fields import settings_from
    from kftune.tasks import resolve_task
    from kftune.tracking.config import TrackingConfig
    from kftune.training.config import TrainConfig

    base = resolve_task(settings_from(TrainConfig, values), dataset.path)
    settings = settings_from(SearchConfig, values)
    base, trials = plan(settings, base)
    if trials:  # a grid/random fan-out: its MLflow run, which select_best ends
        parent = search_run(settings_from(TrackingConfig, values), settings.algorithm, base,
                            tempfile.mkdtemp(prefix="kftune-search-"), max_trials=len(trials), seed=base.seed)
        trials = [{**trial, "parent_run_id": parent.run_id if parent else ""} for trial in trials]
    outputs = namedtuple("PlanOutputs", ["train_config", "trials"])
    return outputs(json.dumps(asdict(base)), trials)


@with_settings(Launch, TrackingConfig)
def search_trial(dataset: Input[Dataset], train_config: str, trial: dict) -> str:
    """Train one trial of a grid/random search; a failed trial is reported, not raised.

    Args:
        dataset: Train and validation splits from preprocess; trials are scored on validation (no test split).
        train_config: The base TrainConfig as JSON (from plan_search).
        trial: {"number": n, "params": {option: value}}.

    Returns:
        The trial's result as JSON: params, state (complete/pruned/failed), validation scores, seconds, error.
    """
    values = dict(locals())
    import json
    import logging
    import tempfile

    from kftune.components.tune.trial import run_trial
    from kftune.settings.fields import settings_from
    from kftune.tracking.config import TrackingConfig
    from kftune.training.config import Launch, TrainConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = TrainConfig(**json.loads(train_config))
    parent = trial.get("parent_run_id", "")
    with tempfile.TemporaryDirectory(prefix="kftune-trial-") as tmp:
        result = run_trial(base, trial["params"], dataset.path, f"{tmp}/model", number=int(trial["number"]),
                           launch=settings_from(Launch, values),
                           tracking=settings_from(TrackingConfig, values) if parent else None, parent_run_id=parent)
    return json.dumps(result | {"parent_run_id": parent})


@with_settings(SearchConfig, TrackingConfig)
def select_best(results: List[str], train_config: str) -> str:
    """Collect the trials of a grid/random search and pick the best by validation score.

    Args:
        results: Every trial's result (JSON), collected from the fan-out.
        train_config: The base TrainConfig as JSON.

    Returns:
        The search record as JSON: every trial, the best.
    """
    values = dict(locals())
    import json

    from kftune.components.tune.config import SearchConfig
    from kftune.components.tune.search import end_search_run
    from kftune.components.tune.search import summary as search_summary
    from kftune.settings.fields import settings_from
    from kftune.tracking.config import TrackingConfig
    from kftune.tracking.tracker import Tracker

    settings = settings_from(SearchConfig, values)
    metric = json.loads(train_config)["metric_for_best_model"]
    trials = [json.loads(r) for r in results]
    record = search_summary(settings.algorithm, metric, settings.direction_for(metric), trials)
    parent = next((t["parent_run_id"] for t in trials if t.get("parent_run_id")), "")
    tracking = settings_from(TrackingConfig, values)
    if parent and tracking.enabled:
        end_search_run(Tracker(tracking.tracking_uri, parent, None), record)
    return json.dumps(record)


@with_settings(SearchConfig, Launch, TrackingConfig)
def optuna_search(dataset: Input[Dataset], train_config: str) -> str:
    """Bayesian search: an Optuna study (TPE sampler, median pruning) whose trials train for real.

    Args:
        dataset: Train and validation splits from preprocess; trials are scored on validation (no test split).
        train_config: The base TrainConfig as JSON (from plan_search).

    Returns:
        The search record as JSON: every trial, the best, parameter importances.
    """
    values = dict(locals())
    import json
    import logging
    import tempfile

    from kftune.components.tune.config import SearchConfig
    from kftune.components.tune.search import optuna_search as run_study
    from kftune.settings.fields import settings_from
    from kftune.tracking.config import TrackingConfig
    from kftune.training.config import Launch, TrainConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from(SearchConfig, values)
    base = TrainConfig(**json.loads(train_config))
    space = settings.space(base)
    with tempfile.TemporaryDirectory(prefix="kftune-study-") as tmp:
        record = run_study(base, space, dataset.path, tmp, max_trials=settings.max_trials, seed=base.seed,
                           direction=settings.direction_for(base.metric_for_best_model), include_defaults=settings.include_defaults,
                           prune=settings.prune, launch=settings_from(Launch, values),
                           tracking=settings_from(TrackingConfig, values))
    return json.dumps(record)


@with_settings(SearchConfig, TrainResources)
def katib_search(
    dataset: Input[Dataset],
    train_config: str,
    image: str = "",
    shared_dir: str = "/kftune/shared",
    namespace: str = "",
) -> str:
    """Search at cluster scale: a Katib Experiment whose trials run the tune image, one pod each.

    Args:
        dataset: Train and validation splits from preprocess (copied to the shared volume for the trials; no test split).
        train_config: The base TrainConfig as JSON (from plan_search).
        image: Image of the trial pods (the tune image).
        shared_dir: Mount path of the shared volume (dataset and base config for the trials).
        namespace: Namespace of the Experiment (empty: this pod's namespace).

    Returns:
        The search record as JSON: every trial, Katib's optimal trial as the best, the Experiment's handle.
    """
    values = dict(locals())
    import json
    import logging

    from kftune.cluster.resources import TrainResources
    from kftune.components.tune.config import SearchConfig
    from kftune.components.tune.katib import launch_katib
    from kftune.components.tune.search import record_from_katib
    from kftune.settings.fields import settings_from
    from kftune.training.config import TrainConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    resources = settings_from(TrainResources, values)
    resources.validate()  # run parameters: checked on the values the run was started with
    settings = settings_from(SearchConfig, values)
    base = TrainConfig(**json.loads(train_config))
    space = settings.space(base)
    outcome = launch_katib(base, dataset.path, space, settings, resources, image=image, mount_path=shared_dir,
                           namespace=namespace or None)
    return json.dumps(record_from_katib(outcome, settings.algorithm, base.metric_for_best_model,
                                        settings.direction_for(base.metric_for_best_model)))


def report_search(
    record: str,
    search: Output[Artifact],
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
) -> NamedTuple("SearchOutputs", [("best_params", dict), ("best_score", float)]):
    """Report a search, whichever way it ran: its best parameters, record, HTML report, table and Metrics.

    Args:
        record: The search record (JSON) from select_best, optuna_search or katib_search.
        search: Output: the search record (JSON): every trial, the best.
        report: Output: HTML table of trials, score plots (and Optuna's parameter importance).
        summary: Output: Markdown table of trials.
        metrics: Output: best score, trial counts.

    Returns:
        best_params: The best trial's options.
        best_score: Its validation score.
    """
    import json

    from kftune.components.tune.report import write_search_outputs

    return write_search_outputs(json.loads(record), search, report, summary, metrics)


def components(images: ImageScheme = ImageScheme()) -> dict:
    """The search components, all in the tune image (trials train in it)."""
    image = images.image("tune")
    return {fn.__name__: dsl.component(fn, base_image=image, install_kfp_package=False)
            for fn in (plan_search, search_trial, select_best, optuna_search, katib_search, report_search)}
