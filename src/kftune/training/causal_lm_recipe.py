"""What the training loop does for a causal LM (task causal-lm): the model, batches, loss, validation, output.

- The model (:mod:`kftune.models.causal_lm`) is an ``AutoModelForCausalLM``; ``lora`` (the task's default) wraps
  it with peft (all linear layers unless ``lora_target_modules`` names others), ``qlora`` loads the base in
  4 bits with bitsandbytes first (CUDA only), ``full`` trains every weight.
- Batches hold ``per_device_train_batch_size`` examples either padded to the longest, or with
  ``packing`` concatenated into one sequence whose position ids restart at each example:
  transformers then keeps attention within each example (a block-diagonal causal mask), so the
  result is the padded batch's, without computing a single padding token.
- The loss is the mean cross-entropy over the assistant's tokens only, and the vocabulary
  projection runs only at the positions that predict one of them (``logits_to_keep``): with
  short answers that is most of the output layer's cost saved.
- Validation reports loss and perplexity on the assistant's tokens.
- The output directory holds the merged model (LoRA folded into the base weights: an ordinary
  Hugging Face model) and, for LoRA, the adapter alone in ``adapter/``.

:class:`CausalLMRecipe` hands these to the training loop.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import torch

from kftune.data.schema import TASK_FILE
from kftune.models.causal_lm import PEFT_MODES, build_causal_lm, save_causal_lm
from kftune.training.precision import autocast
from kftune.training.recipe import Run, Split


def next_token_targets(labels: list[int]) -> list[int]:
    """What each position predicts: the next token where it is an assistant token, else -100."""
    return labels[1:] + [-100]


class CausalCollator:
    """Batches of tokenized conversations: padded (``attention_mask``) or packed (``position_ids``)."""

    def __init__(self, split, pad_id: int, max_length: int = 0, packing: bool = False):
        ids, labels = list(split["input_ids"]), list(split["labels"])
        if max_length:
            ids, labels = [r[:max_length] for r in ids], [r[:max_length] for r in labels]
        self.ids, self.targets = ids, [next_token_targets(r) for r in labels]
        self.pad_id, self.packing = pad_id, packing

    def lengths(self) -> np.ndarray:
        return np.asarray([len(r) for r in self.ids])

    def __call__(self, indices) -> dict[str, torch.Tensor]:
        rows = [self.ids[i] for i in indices]
        targets = [self.targets[i] for i in indices]
        if self.packing:
            return {
                "input_ids": torch.tensor([[t for r in rows for t in r]], dtype=torch.long),
                "position_ids": torch.tensor([[p for r in rows for p in range(len(r))]], dtype=torch.long),
                "targets": torch.tensor([[t for r in targets for t in r]], dtype=torch.long),
            }
        width = max(len(r) for r in rows)
        return {
            "input_ids": torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rows], dtype=torch.long),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long),
            "targets": torch.tensor([r + [-100] * (width - len(r)) for r in targets], dtype=torch.long),
        }


def target_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the logits at the positions that predict a target in some row of ``batch``, those positions' targets (-100
    in a row without one there), the positions): the vocabulary projection runs only there."""
    targets = batch["targets"]
    keep = (targets != -100).any(0).nonzero().squeeze(-1)
    inputs = {k: v for k, v in batch.items() if k != "targets"}
    # use_cache=False: without a cache, transformers reads packed position ids as separate sequences
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    return logits, targets[:, keep], keep


def token_losses(model, batch: dict, label_smoothing: float = 0.0) -> tuple[torch.Tensor, int]:
    """(sum of the cross-entropy over the batch's target tokens, their count); logits only where needed."""
    logits, chosen, _ = target_logits(model, batch)
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), chosen.flatten(), ignore_index=-100,
                                             reduction="sum", label_smoothing=label_smoothing)
    return loss, int((chosen != -100).sum())


def causal_training_loss(model, batch: dict, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the micro-batch's assistant tokens."""
    total, count = token_losses(model, batch, label_smoothing)
    return total / max(count, 1)


EVAL_TOKENS = 2048
"""Tokens per validation batch at most: a packed sequence's attention grows with the square of its length."""


def token_batches(lengths: np.ndarray, batch_size: int, max_tokens: int = EVAL_TOKENS) -> list[np.ndarray]:
    """Example indices in length order, in batches of at most ``batch_size`` examples and ``max_tokens`` tokens."""
    batches, current, tokens = [], [], 0
    for i in np.argsort(lengths, kind="stable"):
        if current and (len(current) == batch_size or tokens + lengths[i] > max_tokens):
            batches.append(np.asarray(current))
            current, tokens = [], 0
        current.append(i)
        tokens += int(lengths[i])
    return batches + ([np.asarray(current)] if current else [])


@torch.no_grad()
def evaluate_causal(model, collate, lengths: np.ndarray, batch_size: int, device, precision: str) -> dict:
    """Loss and perplexity over the assistant tokens of one split."""
    model.eval()
    total, count = 0.0, 0
    for indices in token_batches(lengths, batch_size):
        batch = {k: v.to(device) for k, v in collate(indices).items()}
        with autocast(device, precision):
            loss, n = token_losses(model, batch)
        total, count = total + loss.float().item(), count + n
    model.train()
    mean = total / max(count, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0))}


class CausalLMRecipe:
    """The :class:`~kftune.training.recipe.Recipe` of task causal-lm (see the module docstring)."""

    def build_model(self, run: Run) -> torch.nn.Module:
        return build_causal_lm(run.config, run.base_path, run.device, run.precision)

    def trains_adapters_only(self, config) -> bool:
        return config.training_mode in PEFT_MODES

    def collator(self, split, tokenizer, run: Run) -> CausalCollator:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return CausalCollator(split, pad_id, run.config.max_train_length, run.config.packing)

    def start(self, model, train: Split, validation: Split, run: Run) -> None:
        """Nothing to compute before the first step."""

    def loss(self, model, batch: dict[str, torch.Tensor], config) -> torch.Tensor:
        return causal_training_loss(model, batch)

    def trivial_scores(self) -> dict[str, float]:
        return {}  # no trivial answer: the base model is a baseline, not a trivial one

    def validate(self, model, split: Split, run: Run) -> dict[str, float]:
        return evaluate_causal(model, split.collate, split.lengths, run.config.per_device_eval_batch_size, run.device,
                               run.precision)

    def vocabulary_size(self, model) -> int:
        return getattr(model.config, "vocab_size", 0) or 0

    def write_model(self, model, directory: Path, validation: Split, run: Run) -> None:
        save_causal_lm(model, directory, run.config, run.base_path)
        shutil.copy(run.dataset_dir / TASK_FILE, directory / TASK_FILE)
