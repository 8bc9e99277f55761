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

SCORES = ("exact_match", "answer_accuracy", "rouge_l", "perplexity", "loss")
SAMPLES = 20


def generation_scores(generations: list[str], references: list[str], answers: list[str]) -> dict:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = {
        "exact_match": float(np.mean([normalise_answer(g) == normalise_answer(r)
                                      for g, r in zip(generations, references, strict=True)])),
        "rouge_l": float(np.mean([scorer.score(r, g)["rougeL"].fmeasure
                                  for g, r in zip(generations, references, strict=True)])),
    }
    if answers:
        read = [read_answer(g, answers) for g in generations]
        scores["answer_accuracy"] = float(np.mean([a == normalise_answer(r) for a, r in zip(read, references,
                                                                                              strict=True)]))
        scores["unanswered"] = float(np.mean([a == "" for a in read]))
    return scores


@torch.no_grad()
def reference_loss(model, split, pad_id: int, batch_size: int = 16) -> float:
    """Mean cross-entropy of ``model`` over the reference (assistant) tokens of ``split``."""
    from kftune.training.causal_lm_recipe import CausalCollator, token_batches, token_losses

    collate = CausalCollator(split, pad_id, packing=True)
    total, count = 0.0, 0
    for indices in token_batches(collate.lengths(), batch_size):
        loss, n = token_losses(model, collate(indices))
        total, count = total + loss.item(), count + n
    return total / max(count, 1)


def evaluate_causal_lm(model_dir: str | Path, dataset_dir: str | Path, test_dir: str | Path, config,
                       task: str) -> dict:
    """Score the fine-tuned model and its base model (of ``task``) on the test split artifact ``test_dir``; the
    dataset artifact ``dataset_dir`` gives the task's answers and the tokenizer the prompts were rendered with."""
    info = dataset_task(dataset_dir)
    test = load_test_split(test_dir)
    prompts, references = list(test["prompt"]), list(test["reference"])
    answers = info.get("answers") or []
    history = json.loads((Path(model_dir) / "training_history.json").read_text(encoding="utf-8"))
    base_name = history["config"]["model"]
    max_new = max_new_tokens_for(info, config.max_new_tokens)

    results, generations = {}, {}
    for name, path in (("fine_tuned", model_dir), ("base_model", resolve_model(base_name))):
        model, tokenizer = load_causal_lm(path)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if name == "base_model":  # the dataset's tokenizer: the same chat template the prompts were rendered with
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(Path(dataset_dir) / "tokenizer"))
        generations[name] = generate(model, tokenizer, prompts, max_new, config.batch_size, desc=f"{name} answers")
        scores = generation_scores(generations[name], references, answers)
        scores["loss"] = reference_loss(model, test, pad_id)
        scores["perplexity"] = float(np.exp(min(scores["loss"], 50.0)))
        results[name] = scores
        del model
    model_scores, base = results["fine_tuned"], results["base_model"]
    primary = "answer_accuracy" if answers else "exact_match"
    deltas = {k: model_scores[k] - base[k] for k in ("exact_match", "answer_accuracy", "rouge_l") if k in base}
    deltas["perplexity"] = base["perplexity"] - model_scores["perplexity"]  # positive: the fine-tuned model is better
    result = {
        "task": task,
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
    }
    log.info("test %s %.4f (base model %.4f), exact match %.4f (%.4f), perplexity %.2f (%.2f)",
             primary, model_scores[primary], base[primary], model_scores["exact_match"], base["exact_match"],
             model_scores["perplexity"], base["perplexity"])
    return result
