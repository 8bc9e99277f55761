"""causal-lm: instruction tuning of a causal language model on prompt/completion or chat data.

Loss on the completion only, LoRA by default; evaluated against the base model zero-shot on the
same prompts; exported as a Hugging Face directory (merged weights and the adapter); served
with OpenAI-compatible completions and chat completions. Its stage code is
:mod:`kftune.training.causal_lm`, :mod:`kftune.components.preprocess.instructions`,
:mod:`kftune.components.evaluate.generation` and :mod:`kftune.components.serve.generative`.
"""

from __future__ import annotations

from kftune.data.bundled import INSTRUCTION_DATA, LM_MODEL
from kftune.tasks.base import Task


class CausalLMTask(Task):
    """The causal-lm task: a plain Task whose training loop recipe is the causal LM's."""

    def recipe(self):
        """What the training loop does for this task (:class:`~kftune.training.causal_lm.CausalLMRecipe`)."""
        from kftune.training.causal_lm import CausalLMRecipe

        return CausalLMRecipe()


TASK = CausalLMTask(
    "causal-lm",
    "instruction tuning of a causal language model",
    defaults={
        "data": INSTRUCTION_DATA,
        "model": LM_MODEL,
        "max_seq_length": 256,
        "training_mode": "lora",
        "metric_for_best_model": "loss",
        "learning_rate": 1e-3,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "min_accuracy": 0.0,
    },
    metrics=("answer_accuracy", "exact_match", "rouge_l", "perplexity"),
    primary="answer_accuracy",
    lower_is_better=frozenset({"loss", "perplexity"}),
    best_metrics=("loss",),
    baseline="base_model",
)
