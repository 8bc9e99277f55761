"""Evaluate a fine-tuned causal LM against its base model, asked zero-shot and few-shot.

Every model answers every test prompt greedily (batched, with a progress bar): the fine-tuned model within
``max_new_tokens``; the base model twice (:mod:`~kftune.tasks.causal_lm.few_shot`), zero-shot on the same prompts and
few-shot, each prompt preceded by solved examples of the training split, both within ``baseline_max_new_tokens``
(room to state an answer after a preamble). The few-shot base model is the gate's baseline (``baseline``; with
``few_shot_examples=0`` the zero-shot one): a gain over it is more than learning the answer format. Scores per model:

- ``exact_match``: the generation equals the reference after normalisation (case folded, surrounding whitespace
  and punctuation stripped: :func:`~kftune.data.chat.normalise_answer`): strict, for every model;
- ``answer_accuracy`` (short-answer data, whose references take a few distinct values): the first allowed answer
  the generation names as a word (:func:`~kftune.data.chat.read_answer`) equals the reference's; lenient, the same
  for every model; ``unanswered``: the generation names none;
- ``rouge_l``: ROUGE-L F-measure (Google's ``rouge-score``);
- ``loss`` / ``perplexity`` on the reference tokens (teacher forcing; the few-shot baseline's after its few-shot
  prompt).

The primary score is ``answer_accuracy`` where it applies, else ``exact_match``.

Every score has a paired bootstrap interval, and so has every gain over the baseline: the prompts are resampled,
both models' answers to the same prompts scored together (:func:`prompt_statistics`). Exact match, answer accuracy
and ROUGE-L are means over the prompts; the loss is not (it is the mean over every reference token, so a long
reference weighs more), but it is a ratio of two per-prompt sums (summed loss, reference tokens), and perplexity its
exponential: each resample takes the ratio of its own sums.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from kftune.data.bundled import resolve_model
from kftune.data.chat import normalise_answer, read_answer
from kftune.data.schema import dataset_task, load_test_split
from kftune.inference.generation import generate, max_new_tokens_for
from kftune.models.causal_lm import load_causal_lm

log = logging.getLogger(__name__)

SAMPLES = 20
PER_PROMPT = ("exact_match", "answer_accuracy", "rouge_l", "unanswered")
"""The scores each prompt has (``answer_accuracy`` and ``unanswered``: short-answer data)."""


def prompt_statistics(generations: list[str], references: list[str], answers: list[str], loss: np.ndarray,
                      loss_tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Per prompt (arrays): ``exact_match`` (0/1), ``rouge_l`` (ROUGE-L F-measure), with ``answers`` (short-answer
    data) ``answer_accuracy`` and ``unanswered`` (0/1), ``loss`` and ``loss_tokens`` (the summed cross-entropy over
    its reference tokens and their count: :func:`reference_losses`), and ``examples`` (1)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = list(zip(generations, references, strict=True))
    statistics = {
        "exact_match": np.array([normalise_answer(g) == normalise_answer(r) for g, r in pairs], dtype=np.float64),
        "rouge_l": np.array([scorer.score(r, g)["rougeL"].fmeasure for g, r in pairs], dtype=np.float64),
    }
    if answers:
        read = [read_answer(g, answers) for g in generations]
        statistics["answer_accuracy"] = np.array([a == normalise_answer(r) for a, r in zip(read, references,
                                                                                            strict=True)], np.float64)
        statistics["unanswered"] = np.array([a == "" for a in read], dtype=np.float64)
    return statistics | {"loss": np.asarray(loss, np.float64), "loss_tokens": np.asarray(loss_tokens, np.float64),
                         "examples": np.ones(len(pairs))}


def answer_scores(statistics: dict[str, np.ndarray]) -> dict[str, float]:
    """One model's test scores from its :func:`prompt_statistics`: the means of the per-prompt scores, the loss over
    every reference token and its perplexity."""
    scores = {k: float(statistics[k].mean()) for k in PER_PROMPT if k in statistics}
    scores["loss"] = float(statistics["loss"].sum() / max(statistics["loss_tokens"].sum(), 1))
    scores["perplexity"] = float(np.exp(min(scores["loss"], 50.0)))
    return scores


def scores_from_sums(sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`answer_scores`' exact match, answer accuracy (where the data has it), ROUGE-L and perplexity from the
    sums of :func:`prompt_statistics` over any set of prompts (arrays: one value per resample)."""
    from kftune.tasks.bootstrap import ratio

    n = sums["examples"]
    scores = {k: ratio(sums[k], n) for k in ("answer_accuracy", "exact_match", "rouge_l") if k in sums}
    return scores | {"perplexity": np.exp(np.minimum(ratio(sums["loss"], sums["loss_tokens"]), 50.0))}


@torch.no_grad()
def reference_losses(model, split, pad_id: int, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per example of ``split``: the summed cross-entropy of ``model`` over its reference (assistant) tokens, and
    their count (packed batches; each position's loss goes to the example it lies in)."""
    from kftune.training.causal_lm_recipe import CausalCollator, target_logits, token_batches

    collate = CausalCollator(split, pad_id, packing=True)
    lengths = collate.lengths()
    losses, counts = np.zeros(len(lengths)), np.zeros(len(lengths))
    for indices in token_batches(lengths, batch_size):
        logits, chosen, keep = target_logits(model, collate(indices))
        token_loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), chosen.flatten(),
                                                       ignore_index=-100, reduction="none")
        owner = np.repeat(indices, lengths[indices])[keep.cpu().numpy()]  # packed: one row, examples in order
        np.add.at(losses, owner, token_loss.double().cpu().numpy())
        np.add.at(counts, owner, (chosen.flatten() != -100).cpu().numpy())
    return losses, counts


def reference_loss(model, split, pad_id: int, batch_size: int = 16) -> float:
    """Mean cross-entropy of ``model`` over the reference (assistant) tokens of ``split``."""
    losses, counts = reference_losses(model, split, pad_id, batch_size)
    return float(losses.sum() / max(counts.sum(), 1))


def context_length(model, tokenizer) -> int:
    """The most tokens ``model`` takes: its ``max_position_embeddings``, else the tokenizer's ``model_max_length``
    where that is a real limit, else no limit."""
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 0)
    return int(limit) if limit and limit < 1_000_000 else 1 << 30


def evaluate_causal_lm(model_dir: str | Path, dataset_dir: str | Path, test_dir: str | Path, config, task,
                       champion_dir: str | Path | None = None) -> dict:
    """Score the fine-tuned model and its base model, zero-shot and few-shot, on the test split artifact
    ``test_dir``, with the paired bootstrap intervals of every score and of every gain over the baseline (``task``:
    the causal-lm task). The dataset artifact ``dataset_dir`` gives the task's answers, the training split the
    few-shot examples come from, and the tokenizer (chat template) the prompts were rendered with. With
    ``champion_dir`` (the registry champion's export), the champion answers the same prompts as the fine-tuned
    model, and ``champion`` holds its scores, the gains over it and their paired intervals (or why it could not)."""
    from transformers import AutoTokenizer

    from kftune.data.schema import load_splits
    from kftune.tasks.bootstrap import RESAMPLES, paired_intervals
    from kftune.tasks.causal_lm.data import encode
    from kftune.tasks.causal_lm.few_shot import FEW_SHOT, ZERO_SHOT, few_shot_prompts

    info = dataset_task(dataset_dir)
    test = load_test_split(test_dir)
    prompts, references = list(test["prompt"]), list(test["reference"])
    answers = info.get("answers") or []
    history = json.loads((Path(model_dir) / "training_history.json").read_text(encoding="utf-8"))
    base_name, seed = history["config"]["model"], int(history["config"].get("seed", 42))
    max_new = max_new_tokens_for(info, config.max_new_tokens)
    base_max_new = max(config.baseline_max_new_tokens, max_new)
    shots = config.few_shot_examples

    results, generations, statistics = {}, {}, {}

    def score(name, model, tokenizer, asked, split, budget, pad_id):
        generations[name] = generate(model, tokenizer, asked, budget, config.batch_size, desc=f"{name} answers")
        loss, tokens = reference_losses(model, split, pad_id)
        statistics[name] = task.example_statistics(
            references, {"generations": generations[name], "loss": loss, "loss_tokens": tokens}, info)
        results[name] = answer_scores(statistics[name])

    model, tokenizer = load_causal_lm(model_dir)
    score("fine_tuned", model, tokenizer, prompts, test, max_new, _pad_id(tokenizer))
    del model
    champion_error = ""
    if champion_dir is not None:
        try:  # asked as the fine-tuned model is: the same prompts, budget and reference tokens
            model, tokenizer = load_causal_lm(Path(champion_dir))
            if tokenizer.get_vocab() != AutoTokenizer.from_pretrained(str(Path(dataset_dir) / "tokenizer")).get_vocab():
                raise ValueError("it has another tokenizer (vocabulary) than the candidate's data: the test split's "
                                 "reference tokens would be other words to it")
            score("champion", model, tokenizer, prompts, test, max_new, _pad_id(tokenizer))
            del model
        except Exception as e:  # noqa: BLE001 -- the candidate's own evaluation stands; only its promotion waits
            log.warning("champion: not scored on this test split: %s", e)
            champion_error = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    model, tokenizer = load_causal_lm(resolve_model(base_name))
    pad_id = _pad_id(tokenizer)
    # the dataset's tokenizer: the chat template the prompts were rendered with, and the fine-tuned model asked with
    tokenizer = AutoTokenizer.from_pretrained(str(Path(dataset_dir) / "tokenizer"))
    score(ZERO_SHOT, model, tokenizer, prompts, test, base_max_new, pad_id)
    few_shot = {"examples": shots}
    if shots:
        train = load_splits(dataset_dir)[0]["train"]
        asked, conversations, used = few_shot_prompts(
            tokenizer, list(train["messages"]), list(train["reference"]), list(test["messages"]), answers, shots,
            seed, context_length(model, tokenizer) - base_max_new)
        rows = [encode(tokenizer, c, last_turn_only=True) for c in conversations]
        score(FEW_SHOT, model, tokenizer, asked, {"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows]},
              base_max_new, pad_id)
        few_shot |= {"mean_examples": float(np.mean(used)), "fewer_examples": int(sum(n < shots for n in used)),
                     "seed": seed, "first_prompt": asked[0] if asked else ""}
    del model
    baseline = FEW_SHOT if shots else ZERO_SHOT
    model_scores, base = results["fine_tuned"], results[baseline]
    primary = "answer_accuracy" if answers else "exact_match"
    # positive: the fine-tuned model is better (for perplexity, base minus fine-tuned)
    deltas = {k: task.gain(k, model_scores[k], base[k]) for k in task.metrics if k in base}
    baselines = (ZERO_SHOT, FEW_SHOT) if shots else (ZERO_SHOT,)
    result = {
        "task": task.name,
        "test_size": len(test),
        "primary_metric": primary,
        "answers": answers,
        "max_new_tokens": max_new,
        "baseline_max_new_tokens": base_max_new,
        "few_shot": few_shot,
        "model": model_scores,
        "baselines": {name: results[name] for name in baselines},
        "baseline": baseline,
        "base_model": base_name,
        "delta_vs_baseline": deltas,
        "samples": [
            {"prompt": _asked(test[i]["messages"], prompts[i]), "reference": references[i],
             **{name: generations[name][i] for name in baselines}, "fine_tuned": generations["fine_tuned"][i]}
            for i in range(min(SAMPLES, len(test)))
        ],
        "intervals": paired_intervals(statistics["fine_tuned"], statistics[baseline],
                                      lambda sums: task.scores_from_sums(sums, info), task.gain),
        "resamples": RESAMPLES,
    }
    if "champion" in results:
        intervals = paired_intervals(statistics["fine_tuned"], statistics["champion"],
                                     lambda sums: task.scores_from_sums(sums, info), task.gain)
        result["champion"] = {
            "model": {k: results["champion"][k] for k in task.metrics if k in results["champion"]},
            "delta": {k: task.gain(k, model_scores[k], results["champion"][k]) for k in task.metrics
                      if k in results["champion"]},
            "intervals": {k: {"ci_low": v["ci_low"], "ci_high": v["ci_high"]} for k, v in intervals.items()}}
        for i, sample in enumerate(result["samples"]):
            sample["champion"] = generations["champion"][i]
    elif champion_error:
        result["champion"] = {"error": champion_error}
    log.info("test %s %.4f (base model few-shot %s, zero-shot %.4f), exact match %.4f (%s, %.4f)", primary,
             model_scores[primary], _score_text(results, FEW_SHOT, primary), results[ZERO_SHOT][primary],
             model_scores["exact_match"], _score_text(results, FEW_SHOT, "exact_match"),
             results[ZERO_SHOT]["exact_match"])
    return result


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _asked(messages: str, prompt: str) -> str:
    """What the user asked last (the rendered prompt where the conversation is a single turn)."""
    turns = json.loads(messages)
    return turns[-2]["content"] if len(turns) > 1 else prompt


def _score_text(results: dict, name: str, metric: str) -> str:
    return f"{results[name][metric]:.4f}" if name in results else "not asked"
