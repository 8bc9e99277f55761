"""The base model as a causal LM's baseline: asked zero-shot, and few-shot with solved examples from the training split.

A fine-tuned model has learnt the answer format; the base model asked the bare prompt has not, and often spends its
budget on a preamble ("The text message ... is") before any answer. So the base model is scored twice: zero-shot on
the test prompts as they are, and few-shot, each test prompt preceded by ``few_shot_examples`` solved examples of the
training split (never the test split) as earlier user and assistant turns of the same conversation, rendered with the
dataset's chat template (the template the fine-tuned model was trained and asked with). The few-shot score is the
gate's baseline; both baselines get ``baseline_max_new_tokens`` to answer in.

The examples are drawn per test prompt with the run's seed: for short-answer data balanced over the allowed answers
(round robin over them in a seeded order, so four examples of a two-answer task are two of each), else at random; in
a seeded order. A prompt longer than the base model's context (less the generation budget) loses its first examples
until it fits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from kftune.data.chat import normalise_answer, render
from kftune.settings.fields import setting


@dataclass
class BaseModelBaseline:
    """How the base model is asked, as a causal LM's baseline."""

    few_shot_examples: int = setting(4, ge=0)
    """Causal LMs: the base model is also asked each test prompt after this many solved examples drawn (with the seed) from the training split, as earlier turns of the conversation in its chat template, balanced over the allowed answers of short-answer data; this few-shot score is the gate's baseline (the zero-shot score is reported beside it). 0: no few-shot baseline; the gate's baseline is the base model zero-shot."""  # noqa: E501
    baseline_max_new_tokens: int = setting(32, ge=1)
    """Causal LMs: the base model's greedy answers (its zero-shot and few-shot baselines) may grow to this many tokens, or to max_new_tokens where that is larger: room to state an answer after a preamble."""  # noqa: E501


ZERO_SHOT = "base_model_zero_shot"
FEW_SHOT = "base_model_few_shot"


def choose_examples(train_references: list[str], answers: list[str], k: int, rng: np.random.Generator) -> list[int]:
    """``k`` indices of training examples (fewer where the split has fewer), in a random order: balanced over
    ``answers`` (short-answer data: round robin over them in a random order, each answer's examples drawn without
    replacement) or, without answers, drawn at random."""
    if k <= 0 or not train_references:
        return []
    if not answers:
        return [int(i) for i in rng.permutation(len(train_references))[:k]]
    normalised = [normalise_answer(r) for r in train_references]
    pools = {a: list(rng.permutation([i for i, r in enumerate(normalised) if r == a])) for a in answers}
    order = [answers[i] for i in rng.permutation(len(answers))]
    chosen: list[int] = []
    while len(chosen) < k and any(pools.values()):
        for answer in order:
            if pools[answer] and len(chosen) < k:
                chosen.append(int(pools[answer].pop()))
    return [chosen[i] for i in rng.permutation(len(chosen))]


def few_shot_conversation(examples: list[list[dict]], asked: list[dict]) -> list[dict]:
    """The conversation ``asked`` (a test conversation without its answer) preceded by ``examples`` (solved training
    conversations) as earlier turns: the test's system message first (the examples' own are left out)."""
    system = [m for m in asked if m["role"] == "system"][:1]
    turns = [m for example in examples for m in example if m["role"] != "system"]
    return system + turns + [m for m in asked if m["role"] != "system"]


def few_shot_prompts(tokenizer, train_messages: list[str], train_references: list[str], test_messages: list[str],
                     answers: list[str], k: int, seed: int,
                     max_prompt_tokens: int) -> tuple[list[str], list[list[dict]], list[int]]:
    """Per test conversation (``test_messages``: JSON, ending with the reference answer): the rendered few-shot
    prompt, the few-shot conversation with the reference as its last turn, and how many examples it holds (fewer
    than ``k`` where the prompt had to lose some to fit ``max_prompt_tokens``)."""
    rng = np.random.default_rng(seed)
    prompts, conversations, shots = [], [], []
    for text in test_messages:
        messages = json.loads(text)
        asked, reference = messages[:-1], messages[-1]
        examples = [json.loads(train_messages[i]) for i in choose_examples(train_references, answers, k, rng)]
        while True:
            conversation = few_shot_conversation(examples, asked)
            prompt = render(tokenizer, conversation, generation_prompt=True)
            if not examples or len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= max_prompt_tokens:
                break
            examples = examples[1:]
        prompts.append(prompt)
        conversations.append([*conversation, reference])
        shots.append(len(examples))
    return prompts, conversations, shots
