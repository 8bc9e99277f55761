"""Hyperparameter search: the search space, grid/random plans, best-trial choice, Optuna TPE with
median pruning, failing trials and the report. Trials train the tiny model for real."""

import json
import random
import statistics

import optuna
import pytest

from kftune.components.tune.report import search_html, search_markdown
from kftune.components.tune.search import optuna_search, plan_trials, select_best, summary
from kftune.components.tune.trial import FAILED, run_trial
from kftune.errors import ConfigError, KftuneError
from kftune.tasks import TASKS
from kftune.training.config import Launch, TrainConfig
from kftune.training.loop import train
from kftune.training.pruning import PruningTarget, journal_storage
from kftune.training.search_space import parse_space
from tests.test_learning import make_cue_dataset

DEFAULT_SEARCH_SPACE = json.dumps(TASKS["classification"].search_space)  # the default task's


def test_default_space_parses_with_log_learning_rate():
    space = parse_space(DEFAULT_SEARCH_SPACE)
    lr = space.params[space.names.index("learning_rate")]
    assert lr.kind == "float" and lr.log
    low, mid, high = lr.grid_values()
    assert low == pytest.approx(3e-5) and high == pytest.approx(2e-4)
    assert mid == pytest.approx((3e-5 * 2e-4) ** 0.5, rel=1e-4)  # log-spaced, not the arithmetic mean
    batch = space.params[space.names.index("per_device_train_batch_size")]
    assert batch.kind == "categorical" and batch.choices == (16, 32)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ('{"learning_rate": {"low": 1e-5,}', "not valid JSON"),
        ("[]", "non-empty JSON object"),
        ('{"dropout": [0.1]}', "'dropout' cannot be searched"),
        ('{"lora_r": [4, 8]}', "training_mode is 'full'"),
        ('{"learning_rate": {"low": 1e-3, "high": 1e-5}}', "must be below high"),
        ('{"weight_decay": {"low": 0, "high": 0.1, "log": true}}', "log-scale range needs low > 0"),
        ('{"learning_rate": {"low": 1e-5}}', "needs both low and high"),
        ('{"learning_rate": {"low": 1e-5, "high": 2}}', "learning_rate must be in (0, 1)"),
        ('{"num_train_epochs": {"low": 1.5, "high": 3}}', "expected an integer"),
        ('{"per_device_train_batch_size": []}', "non-empty list"),
        ('{"per_device_train_batch_size": [16, 16]}', "repeat a value"),
        ('{"warmup_ratio": {"low": 0, "high": 0.2, "grid": 0}}', "grid"),
        ('{"warmup_ratio": {"low": 0, "high": 0.2, "scale": "log"}}', "unknown keys ['scale']"),
        ('{"weight_decay": "0.01"}', "expected"),
    ],
)
def test_malformed_search_space_is_rejected_with_the_reason(space, message):
    with pytest.raises(ConfigError, match="search space") as error:
        parse_space(space)
    assert message in str(error.value)


def test_lora_options_are_searchable_in_lora_mode():
    space = parse_space('{"lora_r": [4, 8, 16], "lora_dropout": {"low": 0.0, "high": 0.2, "grid": 2}}', "lora")
    assert space.grid() == [{"lora_r": r, "lora_dropout": d} for r in (4, 8, 16) for d in (0.0, 0.2)]


def test_grid_plan_covers_the_grid_and_a_budget_takes_a_seeded_subset():
    space = parse_space('{"learning_rate": {"low": 1e-5, "high": 1e-3, "log": true}, "num_train_epochs": [2, 3]}')
    full = plan_trials(space, "grid", max_trials=10, seed=0)
    assert [t["number"] for t in full] == list(range(6))
    assert {t["params"]["learning_rate"] for t in full} == {1e-5, 1e-4, 1e-3}
    small = plan_trials(space, "grid", max_trials=4, seed=0)
    assert len(small) == 4 and all(t["params"] in [f["params"] for f in full] for t in small)
    assert small == plan_trials(space, "grid", max_trials=4, seed=0)


def test_random_plan_repeats_by_seed_and_starts_from_the_defaults():
    space = parse_space(DEFAULT_SEARCH_SPACE)
    defaults = {name: getattr(TrainConfig(), name) for name in space.names}
    one = plan_trials(space, "random", max_trials=5, seed=7, defaults=defaults)
    assert one == plan_trials(space, "random", max_trials=5, seed=7, defaults=defaults)
    assert one[0]["params"] == defaults and len(one) == 5
    assert one != plan_trials(space, "random", max_trials=5, seed=8, defaults=defaults)
    for trial in one[1:]:
        assert 3e-5 <= trial["params"]["learning_rate"] <= 2e-4
        assert trial["params"]["per_device_train_batch_size"] in (16, 32)


def test_sampling_respects_log_scale():
    lr = parse_space('{"learning_rate": {"low": 1e-6, "high": 1e-2, "log": true}}').params[0]
    rng = random.Random(0)
    draws = [lr.sample(rng) for _ in range(400)]
    # log-uniform: half of the draws fall in the lower two of the four decades; uniform would put 1 % there
    assert 0.4 < sum(d < 1e-4 for d in draws) / len(draws) < 0.6


def _result(number, score, state="complete", error=""):
    return {"number": number, "params": {"learning_rate": 10.0 ** -number}, "state": state, "score": score,
            "metrics": {}, "epoch_scores": [score] if score is not None else [], "seconds": 1.0, "error": error}


def test_select_best_follows_the_direction_and_skips_failed_and_pruned_trials():
    results = [_result(0, 0.80), _result(1, 0.90, "pruned"), _result(2, 0.85), _result(3, None, "failed", "boom")]
    assert select_best(results, "maximize")["number"] == 2
    assert select_best(results, "minimize")["number"] == 0
    with pytest.raises(KftuneError, match="trial 3: boom"):
        select_best([_result(3, None, "failed", "boom")], "maximize")


def test_report_lists_every_trial(tmp_path):
    results = [_result(0, 0.80), _result(1, 0.70, "pruned"), _result(2, None, "failed", "out of memory")]
    search = summary("random", "f1_macro", "maximize", results)
    text = search_markdown(search)
    assert "3 trials, 1 complete, 1 pruned, 1 failed" in text and "out of memory" in text
    html = search_html(search)
    assert html.count("<tr>") == 4 and "data:image/png;base64" in html


def test_pruning_target_prunes_below_the_median(tmp_path):
    storage = journal_storage(str(tmp_path / "study.journal"))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for scores in ([0.8, 0.85], [0.7, 0.8]):
        trial = study.ask()
        for epoch, score in enumerate(scores, start=1):
            trial.report(score, epoch)
        study.tell(trial, scores[-1])
    weak, strong = study.ask(), study.ask()
    target = PruningTarget(str(tmp_path / "study.journal"), "s", weak._trial_id)
    assert PruningTarget.from_json(target.to_json()) == target
    assert target.report(0.5, 1) is True
    assert PruningTarget(str(tmp_path / "study.journal"), "s", strong._trial_id).report(0.9, 1) is False


def test_training_loop_stops_a_pruned_trial(tmp_path, prepared, tiny_model):
    storage_path = tmp_path / "study.journal"
    study = optuna.create_study(study_name="s", storage=journal_storage(str(storage_path)), direction="maximize")
    for _ in range(2):  # two finished trials that scored perfectly after every epoch
        trial = study.ask()
        for epoch in (1, 2, 3):
            trial.report(1.0, epoch)
        study.tell(trial, 1.0)
    trial = study.ask()
    config = TrainConfig(model=str(tiny_model), num_train_epochs=3, per_device_train_batch_size=16,
                         pruning=PruningTarget(str(storage_path), "s", trial._trial_id).to_json())
    history = train(config, prepared, tmp_path / "model")
    assert history["pruned_at_epoch"] == 1 and len(history["epochs"]) == 1
    assert study.trials[-1].intermediate_values == {1: history["epochs"][0]["val_f1_macro"]}


def test_failing_trial_is_reported_not_raised(tmp_path, prepared, tiny_model):
    # two processes cannot share a single batch: the loop fails in both ranks, torchrun exits non-zero
    base = TrainConfig(model=str(tiny_model), num_train_epochs=1)
    result = run_trial(base, {"per_device_train_batch_size": 4096}, prepared, tmp_path / "out", number=3,
                       launch=Launch(nproc_per_node=2))
    assert result["state"] == FAILED and result["number"] == 3 and result["score"] is None
    assert "torchrun exited with code" in result["error"]
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def cue_dataset(tmp_path_factory, tiny_model):
    """A task the tiny model learns within one epoch at a sound learning rate (tests/test_learning.py)."""
    return make_cue_dataset(tmp_path_factory.mktemp("cues"), tiny_model)


TPE_EPOCHS = 3


def tpe_search(work, cue_dataset, tiny_model, seed: int, max_trials: int, tracking=None) -> dict:
    """A TPE search of the learning rate over [1e-4, 1e-2] minimising the validation loss, trials of 3 epochs on the
    cue task: trial 0 is the base configuration (3e-3), TPE proposes the next from the scores so far (one random
    start), and from trial 1 on the median pruner may stop a trial after its first or second epoch. The loss, unlike
    F1 on this task (the majority class's until the rule is learnt), differs between any two learning rates from
    the first epoch on, so the pruner's decisions are the scores'."""
    base = TrainConfig(model=str(tiny_model), num_train_epochs=TPE_EPOCHS, learning_rate=3e-3,
                       per_device_train_batch_size=16, metric_for_best_model="loss", warmup_ratio=0.0,
                       early_stopping_patience=0, save_steps=0)
    space = parse_space('{"learning_rate": {"low": 1e-4, "high": 1e-2, "log": true}}')
    return optuna_search(base, space, cue_dataset, work, max_trials=max_trials, seed=seed, direction="minimize",
                         n_startup_trials=1, tracking=tracking)


def median_pruner_stops(trials: list[dict], epochs: int) -> list[int | None]:
    """The epoch after which Optuna's median pruner (one startup trial, no warm-up epochs) stops each trial of a
    search minimising its score, worked out from the trials' own scores: the first epoch before the last whose best
    (lowest) score so far is above the median of the completed earlier trials' scores at that epoch (after the last
    one there is nothing left to save). None: it lets the trial run to its end."""
    stops = []
    for number, trial in enumerate(trials):
        complete = [t["epoch_scores"] for t in trials[:number] if t["state"] == "complete"]
        stop = None
        for epoch in range(1, min(len(trial["epoch_scores"]) + 1, epochs)):
            at_epoch = [scores[epoch - 1] for scores in complete if len(scores) >= epoch]
            if at_epoch and min(trial["epoch_scores"][:epoch]) > statistics.median(at_epoch):
                stop = epoch
                break
        stops.append(stop)
    return stops


@pytest.mark.slow
def test_tpe_search_is_reproducible_by_its_seed(tmp_path, cue_dataset, tiny_model):
    """Two searches with the same seed train the same trials to the same scores, pruned (or not) at the same
    epochs; nothing is arranged for pruning: the median pruner decides from the scores. Another seed proposes
    other learning rates."""
    from mlflow import MlflowClient

    from kftune.tracking import TrackingConfig

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first, second = (tpe_search(tmp_path / f"study-{i}", cue_dataset, tiny_model, seed=3, max_trials=3,
                                tracking=TrackingConfig(store) if i == 0 else None)
                     for i in range(2))  # fmt: skip
    keys = ("number", "params", "state", "score", "epoch_scores", "best_epoch")
    assert [{k: t.get(k) for k in keys} for t in first["trials"]] == [{k: t.get(k) for k in keys}
                                                                       for t in second["trials"]]
    assert first["best"]["number"] == second["best"]["number"] and first["best"]["score"] == second["best"]["score"]

    trials = first["trials"]
    assert trials[0]["params"] == {"learning_rate": 3e-3} and trials[0]["state"] == "complete"
    assert len({t["params"]["learning_rate"] for t in trials}) == 3
    assert all(1e-4 <= t["params"]["learning_rate"] <= 1e-2 for t in trials)
    # each trial pruned exactly where its loss fell behind the median of the completed ones, and stopped there
    stops = median_pruner_stops(trials, TPE_EPOCHS)
    assert [len(t["epoch_scores"]) if t["state"] == "pruned" else None for t in trials] == stops, trials
    assert all(len(t["epoch_scores"]) == TPE_EPOCHS for t in trials if t["state"] == "complete")
    assert first["best"]["score"] == min(t["score"] for t in trials if t["state"] == "complete")
    # the tracked (first) search: one MLflow run, a child run per trial (pruned: KILLED), each with its loss curve
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("kftune").experiment_id])
    [study] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.info.run_id),
                      key=lambda r: int(r.data.tags["trial"]))
    assert len(runs) == 1 + len(trials) and study.info.status == "FINISHED"
    assert [(r.data.tags["trial.state"], r.info.status) for r in children] == [
        (t["state"], "KILLED" if t["state"] == "pruned" else "FINISHED") for t in trials]
    assert [len(client.get_metric_history(r.info.run_id, "val_loss")) for r in children] == [
        len(t["epoch_scores"]) for t in trials]
    assert study.data.metrics["best_val_loss"] == first["best"]["score"]

    other = tpe_search(tmp_path / "study-other", cue_dataset, tiny_model, seed=4, max_trials=2)["trials"]
    assert other[0]["params"] == trials[0]["params"] and other[0]["epoch_scores"] == trials[0]["epoch_scores"]
    assert other[1]["params"] != trials[1]["params"]


def test_hyperparameters_replace_searchable_options_with_checked_types():
    from kftune.training.search_space import apply_hyperparameters

    config = apply_hyperparameters(TrainConfig(), {"learning_rate": 3e-5, "per_device_train_batch_size": 16.0})
    assert config.learning_rate == 3e-5 and config.per_device_train_batch_size == 16
    assert isinstance(config.per_device_train_batch_size, int)
    with pytest.raises(ConfigError, match="not searchable"):
        apply_hyperparameters(TrainConfig(), {"model": "other"})
    with pytest.raises(ConfigError, match="expected an integer"):
        apply_hyperparameters(TrainConfig(), {"num_train_epochs": 2.5})
    with pytest.raises(ConfigError, match="warmup_ratio"):
        apply_hyperparameters(TrainConfig(), {"warmup_ratio": 1.5})


def test_max_seq_length_cuts_texts_and_keeps_the_closing_token(prepared):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from kftune.tasks import TASKS
    from kftune.training.encoder_recipe import Collator

    split = load_from_disk(str(prepared / "splits"))["train"]
    tokenizer = AutoTokenizer.from_pretrained(str(prepared / "tokenizer"))
    longest = max(range(len(split)), key=lambda i: len(split[i]["input_ids"]))
    assert len(split[longest]["input_ids"]) > 8
    batch = Collator(split, tokenizer, 8, TASKS["classification"])([longest])
    full = split[longest]["input_ids"]
    assert batch["input_ids"].shape == (1, 8) and batch["attention_mask"].shape == (1, 8)
    assert batch["input_ids"][0].tolist() == full[:7] + [full[-1]]
    assert full[-1] == tokenizer.sep_token_id


def test_random_search_trains_its_trials_and_picks_the_best(tmp_path, prepared, tiny_model):
    base = TrainConfig(model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=32, max_steps=4)
    space = parse_space('{"learning_rate": {"low": 1e-5, "high": 1e-2, "log": true}, "warmup_ratio": [0.0, 0.2]}')
    plan = plan_trials(space, "random", max_trials=3, seed=5)
    results = [run_trial(base, t["params"], prepared, tmp_path / f"t{t['number']}", t["number"]) for t in plan]
    assert [r["params"] for r in results] == [t["params"] for t in plan]
    assert all(r["state"] == "complete" and 0 <= r["score"] <= 1 for r in results)
    record = summary("random", "f1_macro", "maximize", results)
    assert record["best"]["score"] == max(r["score"] for r in results)
    assert not any(tmp_path.iterdir())  # trial models are removed once scored
