"""KFP components of the hyperparameter search (thin layers over space.py, search.py, trial.py,
katib.py and report.py).

- ``plan_search``: checks the search space and base configuration, and plans grid/random trials;
- ``search_trial``: one trial (a real training run), fanned out with ``dsl.ParallelFor``;
- ``select_best``: fans the trial results in (``dsl.Collected``) and picks the best;
- ``optuna_search``: a whole Optuna TPE study with median pruning, in one task;
- ``katib_search``: a Katib ``Experiment`` on the cluster, each trial a pod of the tune image.

Each of the last three writes the same outputs: the best parameters and score, the search
record (JSON), an HTML report with plots, a Markdown table and Metrics.
"""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from kftune.components.common.images import ImageScheme


def plan_search(
    search_space: str,
    algorithm: str = "tpe",
    search_backend: str = "pipeline",
    max_trials: int = 4,
    seed: int = 42,
    direction: str = "maximize",
    include_defaults: bool = True,
    base_model: str = "bundled:all-MiniLM-L6-v2",
    learning_rate: float = 1e-4,
    num_train_epochs: int = 3,
    per_device_train_batch_size: int = 32,
    gradient_accumulation_steps: int = 1,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    group_by_length: bool = False,
    mixed_precision: str = "auto",
    metric: str = "f1_macro",
    early_stopping_patience: int = 2,
    training_mode: str = "full",
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.1,
    lora_target_modules: str = "",
    nproc_per_node: int = 0,
    max_steps: int = 0,
) -> NamedTuple("PlanOutputs", [("train_config", str), ("trials", List[dict])]):
    """Check the search and the base training configuration; plan the trials of a grid/random search.

    Args:
        search_space: JSON ranges/choices per option (see components/tune/README.md).
        algorithm: grid, random or tpe (Optuna); with the katib backend also bayesianoptimization.
        search_backend: pipeline (trials as pipeline tasks, or one Optuna task) or katib (a Katib Experiment).
        max_trials: Trials in all (the default configuration included when include_defaults).
        seed: Seed of the search and of every trial's training.
        direction: maximize or minimize the validation metric.
        include_defaults: Make the first trial the base configuration itself.
        base_model: Pretrained model of every trial.
        learning_rate: Base learning rate (searched options replace base values).
        num_train_epochs: Base epochs.
        per_device_train_batch_size: Base batch size.
        gradient_accumulation_steps: Base accumulation steps.
        warmup_ratio: Base warmup ratio.
        weight_decay: Base weight decay.
        group_by_length: Batch texts of similar length together: 1.5x faster on a CPU, off by default as it has not been shown to keep accuracy.
        mixed_precision: auto, bf16, fp16 or no.
        metric: Validation metric the search optimises (and each trial picks its best epoch by).
        early_stopping_patience: Epochs without improvement before a trial stops (0 never).
        training_mode: full, freeze_encoder, lora or prompt_tuning.
        lora_r: Base LoRA rank.
        lora_alpha: Base LoRA alpha.
        lora_dropout: Base LoRA dropout.
        lora_target_modules: LoRA target modules (empty: peft's default).
        nproc_per_node: Training processes per trial (0: one per GPU, or 1 on CPU).
        max_steps: Cap on optimizer steps per trial (0: none); for smoke runs.

    Returns:
        train_config: The base TrainConfig as JSON.
        trials: The planned trials [{"number", "params"}] (empty for tpe and for katib).
    """
    import json
    from collections import namedtuple
    from dataclasses import asdict

    from kftune.components.common.training.config import TrainConfig
    from kftune.components.common.training.search_space import parse_space
    from kftune.components.tune.search import check_search, default_params, plan_trials

    base = TrainConfig(
        model=base_model, learning_rate=learning_rate, num_train_epochs=num_train_epochs,
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, warmup_ratio=warmup_ratio,
        weight_decay=weight_decay, seed=seed, group_by_length=group_by_length, mixed_precision=mixed_precision,
        metric_for_best_model=metric, early_stopping_patience=early_stopping_patience,
        training_mode=training_mode, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        lora_target_modules=lora_target_modules, nproc_per_node=nproc_per_node, max_steps=max_steps,
    )
    base.validate()
    check_search(algorithm, max_trials, metric, direction, search_backend)
    space = parse_space(search_space, training_mode)
    trials = []
    if search_backend == "pipeline" and algorithm in ("grid", "random"):
        defaults = default_params(space, base) if include_defaults else None
        trials = plan_trials(space, algorithm, max_trials, seed, defaults)
    outputs = namedtuple("PlanOutputs", ["train_config", "trials"])
    return outputs(json.dumps(asdict(base)), trials)


def search_trial(dataset: Input[Dataset], train_config: str, trial: dict) -> str:
    """Train one trial of a grid/random search; a failed trial is reported, not raised.

    Args:
        dataset: Tokenized splits from preprocess.
        train_config: The base TrainConfig as JSON (from plan_search).
        trial: {"number": n, "params": {option: value}}.

    Returns:
        The trial's result as JSON: params, state (complete/pruned/failed), validation scores, seconds, error.
    """
    import json
    import logging
    import tempfile

    from kftune.components.common.training.config import TrainConfig
    from kftune.components.tune.trial import run_trial

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = TrainConfig(**json.loads(train_config))
    with tempfile.TemporaryDirectory(prefix="kftune-trial-") as tmp:
        result = run_trial(base, trial["params"], dataset.path, f"{tmp}/model", number=int(trial["number"]))
    return json.dumps(result)


def select_best(
    results: List[str],
    train_config: str,
    algorithm: str,
    direction: str,
    search: Output[Artifact],
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
) -> NamedTuple("SearchOutputs", [("best_params", dict), ("best_score", float)]):
    """Collect the trials of a grid/random search and pick the best by validation score.

    Args:
        results: Every trial's result (JSON), collected from the fan-out.
        train_config: The base TrainConfig as JSON.
        algorithm: grid or random (for the report).
        direction: maximize or minimize.
        search: Output: the search record (JSON): every trial, the best.
        report: Output: HTML table of trials and score plots.
        summary: Output: Markdown table of trials.
        metrics: Output: best score, trial counts.

    Returns:
        best_params: The best trial's options.
        best_score: Its validation score.
    """
    import json

    from kftune.components.tune.report import write_search_outputs
    from kftune.components.tune.search import summary as search_summary

    metric = json.loads(train_config)["metric_for_best_model"]
    record = search_summary(algorithm, metric, direction, [json.loads(r) for r in results])
    return write_search_outputs(record, search, report, summary, metrics)


def optuna_search(
    dataset: Input[Dataset],
    train_config: str,
    search_space: str,
    search: Output[Artifact],
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
    max_trials: int = 4,
    seed: int = 42,
    direction: str = "maximize",
    include_defaults: bool = True,
    prune: bool = True,
) -> NamedTuple("SearchOutputs", [("best_params", dict), ("best_score", float)]):
    """Bayesian search: an Optuna study (TPE sampler, median pruning) whose trials train for real.

    Args:
        dataset: Tokenized splits from preprocess.
        train_config: The base TrainConfig as JSON (from plan_search).
        search_space: JSON ranges/choices per option.
        search: Output: the search record (JSON): every trial, the best, parameter importances.
        report: Output: HTML table of trials, score plots and parameter importance.
        summary: Output: Markdown table of trials.
        metrics: Output: best score, trial counts.
        max_trials: Trials in all.
        seed: Seed of the sampler (and of every trial's training).
        direction: maximize or minimize the validation metric.
        include_defaults: Make the first trial the base configuration itself.
        prune: Stop trials whose per-epoch validation score falls below the median of earlier trials.

    Returns:
        best_params: The best trial's options.
        best_score: Its validation score.
    """
    import json
    import logging
    import tempfile

    from kftune.components.common.training.config import TrainConfig
    from kftune.components.common.training.search_space import parse_space
    from kftune.components.tune.report import write_search_outputs
    from kftune.components.tune.search import optuna_search as run_study

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = TrainConfig(**json.loads(train_config))
    space = parse_space(search_space, base.training_mode)
    with tempfile.TemporaryDirectory(prefix="kftune-study-") as tmp:
        record = run_study(base, space, dataset.path, tmp, max_trials=max_trials, seed=seed, direction=direction,
                           include_defaults=include_defaults, prune=prune)
    return write_search_outputs(record, search, report, summary, metrics)


def katib_search(
    dataset: Input[Dataset],
    train_config: str,
    search_space: str,
    search: Output[Artifact],
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
    algorithm: str = "tpe",
    max_trials: int = 4,
    parallel_trials: int = 2,
    max_failed_trials: int = 2,
    seed: int = 42,
    direction: str = "maximize",
    image: str = "",
    shared_dir: str = "/kftune/shared",
    shared_pvc: str = "kftune-shared",
    gpus_per_trial: int = 1,
    trial_placement: str = "{}",
    namespace: str = "",
) -> NamedTuple("SearchOutputs", [("best_params", dict), ("best_score", float)]):
    """Search at cluster scale: a Katib Experiment whose trials run the tune image, one pod each.

    Args:
        dataset: Tokenized splits from preprocess (copied to the shared volume for the trials).
        train_config: The base TrainConfig as JSON (from plan_search).
        search_space: JSON ranges/choices per option.
        search: Output: the search record (JSON): every trial, the best, the Experiment's handle.
        report: Output: HTML table of trials and score plots.
        summary: Output: Markdown table of trials.
        metrics: Output: best score, trial counts.
        algorithm: Katib algorithm: grid, random, tpe or bayesianoptimization.
        max_trials: Trials in all.
        parallel_trials: Trials running at once.
        max_failed_trials: The Experiment fails after this many failed trials.
        seed: random_state of Katib's suggestion service (and every trial's training seed).
        direction: maximize or minimize the validation metric.
        image: Image of the trial pods (the tune image).
        shared_dir: Mount path of the shared volume (dataset and base config for the trials).
        shared_pvc: The ReadWriteMany PVC mounted there, in this pod and in every trial.
        gpus_per_trial: GPUs each trial pod requests.
        trial_placement: JSON with the trial pods' cpu, memory, node_selector and tolerations.
        namespace: Namespace of the Experiment (empty: this pod's namespace).

    Returns:
        best_params: Katib's optimal trial's options.
        best_score: Its validation score.
    """
    import json
    import logging

    from kftune.components.common.training.config import TrainConfig
    from kftune.components.common.training.search_space import parse_space
    from kftune.components.tune.katib import launch_katib
    from kftune.components.tune.report import write_search_outputs
    from kftune.components.tune.search import record_from_katib

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = TrainConfig(**json.loads(train_config))
    space = parse_space(search_space, base.training_mode)
    outcome = launch_katib(
        base, dataset.path, space, algorithm=algorithm, metric=base.metric_for_best_model, direction=direction,
        max_trials=max_trials, parallel_trials=parallel_trials, max_failed_trials=max_failed_trials, seed=seed,
        image=image, pvc_name=shared_pvc, mount_path=shared_dir, namespace=namespace or None,
        gpus_per_trial=gpus_per_trial, **json.loads(trial_placement),
    )
    record = record_from_katib(outcome, algorithm, base.metric_for_best_model, direction)
    return write_search_outputs(record, search, report, summary, metrics)


def components(images: ImageScheme = ImageScheme()) -> dict:
    """The search components, all in the tune image (trials train in it)."""
    image = images.image("tune")
    return {fn.__name__: dsl.component(fn, base_image=image, install_kfp_package=False)
            for fn in (plan_search, search_trial, select_best, optuna_search, katib_search)}
