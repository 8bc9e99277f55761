"""Evaluate a preference-tuned model on the held-out pairs, against the model it started from.

Every test pair's two sides are scored by teacher forcing (each side's log-probability summed over its response
tokens, :func:`~kftune.tasks.dpo.training.pair_logps`) by the trained model and by the starting model (the
``model`` setting of training: the base weights, which is the LoRA model with its adapter disabled, or the SFT
export it was given). Scores:

- ``preference_accuracy``: the share of pairs whose chosen side the model gives the higher log-probability (ties
  count half); for the trained model and for the starting model, the gate's baseline (``starting_model``);
- ``reward_accuracy``: the share of pairs whose implicit reward ``beta ((log pi - log ref)(chosen) - (log pi -
  log ref)(rejected))`` is positive, the reference being the starting model (``beta``: training's);
- ``reward_margin``: the mean of that reward difference.

The reward scores are the trained model's only: the starting model, its own reference, has none (its margin is 0 by
definition). The primary score is ``preference_accuracy``; every score is a mean over the pairs, so the paired
bootstrap resamples the pairs (:func:`pair_statistics`), and the gain over the starting model has its interval.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from kftune.data.bundled import resolve_model
from kftune.data.schema import dataset_task, load_test_split
from kftune.models.causal_lm import load_causal_lm

log = logging.getLogger(__name__)

STARTING_MODEL = "starting_model"
SAMPLES = 20
STATISTICS = {"preference": "preference_accuracy", "reward_correct": "reward_accuracy",
              "reward_margin": "reward_margin"}
"""Each per-pair statistic, and the score that is its mean."""


def pair_statistics(policy, reference, beta: float) -> dict[str, np.ndarray]:
    """Per pair: :func:`~kftune.tasks.dpo.training.preference_scores` and ``examples`` (1)."""
    from kftune.tasks.dpo.training import preference_scores

    scores = preference_scores(policy, reference, beta)
    return scores | {"examples": np.ones(len(scores["preference"]))}


def scores_from_sums(sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each score of :data:`STATISTICS` from the sums of :func:`pair_statistics` over any set of pairs."""
    from kftune.tasks.bootstrap import ratio

    return {score: ratio(sums[statistic], sums["examples"]) for statistic, score in STATISTICS.items()
            if statistic in sums}


def score_model(model, tokenizer, test, batch_size: int = 16):
    """(pairs x 2) log-probabilities of ``model`` of each test pair's sides."""
    import torch

    from kftune.tasks.dpo.training import PairCollator, pair_logps

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return pair_logps(model, PairCollator(test, pad_id), batch_size, torch.device("cpu"), "no")


def evaluate_preferences(model_dir: str | Path, dataset_dir: str | Path, test_dir: str | Path, config, task,
                         champion_dir: str | Path | None = None) -> dict:
    """Score the trained model and its starting model on the test pairs of ``test_dir``, with the paired bootstrap
    intervals of the scores and of the gain over the starting model (``task``: the dpo task); with ``champion_dir``
    (the registry champion's export) also the champion, its scores, the gains over it and their intervals (or why it
    could not be scored)."""
    from transformers import AutoTokenizer

    from kftune.tasks.bootstrap import RESAMPLES, paired_intervals

    info = dataset_task(dataset_dir)
    test = load_test_split(test_dir)
    history = json.loads((Path(model_dir) / "training_history.json").read_text(encoding="utf-8"))
    base_name, beta = history["config"]["model"], float(history["config"].get("beta", 0.1))
    batch_size = min(config.batch_size, 16)
    dataset_vocab = AutoTokenizer.from_pretrained(str(Path(dataset_dir) / "tokenizer")).get_vocab()

    logps = {}
    model, tokenizer = load_causal_lm(model_dir)
    logps["trained"] = score_model(model, tokenizer, test, batch_size)
    del model
    model, tokenizer = load_causal_lm(resolve_model(base_name))
    logps[STARTING_MODEL] = score_model(model, tokenizer, test, batch_size)
    del model
    champion_error = ""
    if champion_dir is not None:
        try:  # its pairs tokenized as the candidate's: the same tokens must mean the same to it
            model, tokenizer = load_causal_lm(Path(champion_dir))
            if tokenizer.get_vocab() != dataset_vocab:
                raise ValueError("it has another tokenizer (vocabulary) than the candidate's data: the test pairs' "
                                 "tokens would be other words to it")
            logps["champion"] = score_model(model, tokenizer, test, batch_size)
            del model
        except Exception as e:  # noqa: BLE001 -- the candidate's own evaluation stands; only its promotion waits
            log.warning("champion: not scored on this test split: %s", e)
            champion_error = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__

    reference = logps[STARTING_MODEL]
    statistics = {name: task.example_statistics(None, {"logps": value, "reference": reference, "beta": beta}, info)
                  for name, value in logps.items()}
    scores = {name: {k: float(v[0]) for k, v in scores_from_sums(_sums(s)).items()} for name, s in statistics.items()}
    base_scores = {"preference_accuracy": scores[STARTING_MODEL]["preference_accuracy"]}
    model_scores = scores["trained"]
    only_preference = {k: v for k, v in statistics[STARTING_MODEL].items() if k in ("preference", "examples")}

    def intervals(other):  # the gain over a model with preference accuracy alone
        ours = {k: v for k, v in statistics["trained"].items() if k in other}
        return paired_intervals(ours, other, lambda sums: task.scores_from_sums(sums, info), task.gain)

    margins = statistics["trained"]["reward_margin"]
    result = {
        "task": task.name,
        "test_size": len(test),
        "primary_metric": task.primary,
        "beta": beta,
        "model": model_scores,
        "baselines": {STARTING_MODEL: base_scores},
        "baseline": STARTING_MODEL,
        "base_model": base_name,
        "delta_vs_baseline": {k: task.gain(k, model_scores[k], v) for k, v in base_scores.items()},
        "intervals": intervals(only_preference),
        "resamples": RESAMPLES,
        "samples": [{"prompt": _asked(test[i]["prompt_messages"]), "chosen": test[i]["chosen"],
                     "rejected": test[i]["rejected"], "margin": float(margins[i]),
                     "trained_prefers_chosen": float(statistics["trained"]["preference"][i]),
                     "starting_model_prefers_chosen": float(statistics[STARTING_MODEL]["preference"][i])}
                    for i in range(min(SAMPLES, len(test)))],
    }
    if "champion" in scores:
        champion_only = {k: v for k, v in statistics["champion"].items() if k in ("preference", "examples")}
        result["champion"] = {
            "model": scores["champion"],
            "delta": {k: task.gain(k, model_scores[k], v) for k, v in scores["champion"].items()},
            "intervals": {k: {"ci_low": v["ci_low"], "ci_high": v["ci_high"]}
                          for k, v in intervals(champion_only).items()}}
    elif champion_error:
        result["champion"] = {"error": champion_error}
    log.info("test preference_accuracy %.4f (starting model %.4f), reward_accuracy %.4f, reward_margin %.4f",
             model_scores["preference_accuracy"], base_scores["preference_accuracy"], model_scores["reward_accuracy"],
             model_scores["reward_margin"])
    return result


def _sums(statistics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from kftune.tasks.bootstrap import full_sums

    return full_sums(statistics)


def _asked(prompt_messages: str) -> str:
    """What the user asked last."""
    users = [m["content"] for m in json.loads(prompt_messages) if m["role"] == "user"]
    return users[-1] if users else ""
