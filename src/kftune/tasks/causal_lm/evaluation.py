"""Evaluate a fine-tuned causal LM against its base model, zero-shot on the same prompts.

Both models answer every test prompt greedily (``max_new_tokens`` bounded, batched, with a
progress bar). Scores per model:

- ``exact_match``: the generation equals the reference after normalisation (case folded,
  surrounding whitespace and punctuation stripped: :func:`~kftune.data.chat.normalise_answer`);
- ``answer_accuracy`` (short-answer data, whose references take a few distinct values): the
  allowed answer the generation *starts with* equals the reference's;
- ``rouge_l``: ROUGE-L F-measure (Google's ``rouge-score``);
- ``loss`` / ``perplexity`` on the reference tokens (teacher forcing).

The baseline is the base model itself, asked the same prompts; a fair comparison needs
prompts that state the task and the allowed answers (the bundled data's do), so that a gain is
more than learning the answer format. The primary score is ``answer_accuracy`` where it
applies, else ``exact_match``.

Every score has a paired bootstrap interval, and so has every gain over the base model: the
prompts are resampled, both models' answers to the same prompts scored together
(:func:`prompt_statistics`). Exact match, answer accuracy and ROUGE-L are means over the
prompts; the loss is not (it is the mean over every reference token, so a long reference weighs
more), but it is a ratio of two per-prompt sums (summed loss, reference tokens), and perplexity
its exponential: each resample takes the ratio of its own sums.
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


def evaluate_causal_lm(model_dir: str | Path, dataset_dir: str | Path, test_dir: str | Path, config, task) -> dict:
    """Score the fine-tuned model and its base model on the test split artifact ``test_dir``, with the paired
    bootstrap intervals of every score and gain (``task``: the causal-lm task); the dataset artifact
    ``dataset_dir`` gives the task's answers and the tokenizer the prompts were rendered with."""
    from kftune.tasks.bootstrap import RESAMPLES, paired_intervals

    info = dataset_task(dataset_dir)
    test = load_test_split(test_dir)
    prompts, references = list(test["prompt"]), list(test["reference"])
    answers = info.get("answers") or []
    history = json.loads((Path(model_dir) / "training_history.json").read_text(encoding="utf-8"))
    base_name = history["config"]["model"]
    max_new = max_new_tokens_for(info, config.max_new_tokens)

    results, generations, statistics = {}, {}, {}
    for name, path in (("fine_tuned", model_dir), ("base_model", resolve_model(base_name))):
        model, tokenizer = load_causal_lm(path)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if name == "base_model":  # the dataset's tokenizer: the same chat template the prompts were rendered with
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(Path(dataset_dir) / "tokenizer"))
        generations[name] = generate(model, tokenizer, prompts, max_new, config.batch_size, desc=f"{name} answers")
        loss, tokens = reference_losses(model, test, pad_id)
        statistics[name] = task.example_statistics(
            references, {"generations": generations[name], "loss": loss, "loss_tokens": tokens}, info)
        results[name] = answer_scores(statistics[name])
        del model
    model_scores, base = results["fine_tuned"], results["base_model"]
    primary = "answer_accuracy" if answers else "exact_match"
    # positive: the fine-tuned model is better (for perplexity, base minus fine-tuned)
    deltas = {k: task.gain(k, model_scores[k], base[k]) for k in task.metrics if k in base}
    result = {
        "task": task.name,
        "test_size": len(test),
        "primary_metric": primary,
        "answers": answers,
        "max_new_tokens": max_new,
        "model": model_scores,
        "baselines": {"base_model": base},
        "baseline": "base_model",
        "base_model": base_name,
        "delta_vs_baseline": deltas,
        "samples": [
            {"prompt": json.loads(test[i]["messages"])[-2]["content"] if len(json.loads(test[i]["messages"])) > 1
             else prompts[i], "reference": references[i], "base_model": generations["base_model"][i],
             "fine_tuned": generations["fine_tuned"][i]}
            for i in range(min(SAMPLES, len(test)))
        ],
        "intervals": paired_intervals(statistics["fine_tuned"], statistics["base_model"],
                                      lambda sums: task.scores_from_sums(sums, info), task.gain),
        "resamples": RESAMPLES,
    }
    log.info("test %s %.4f (base model %.4f), exact match %.4f (%.4f), perplexity %.2f (%.2f)",
             primary, model_scores[primary], base[primary], model_scores["exact_match"], base["exact_match"],
             model_scores["perplexity"], base["perplexity"])
    return result
