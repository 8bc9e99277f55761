"""What the training loop does for task dpo: pairs of sequences, the reference's log-probabilities, the DPO loss.

- A pair is two sequences, prompt + chosen and prompt + rejected (:mod:`~kftune.tasks.dpo.data`); a batch of
  ``B`` pairs holds the ``B`` chosen sequences, then the ``B`` rejected ones, padded or packed (as the causal-lm
  task batches), with each position's sequence number (``segments``). A sequence's log-probability is the sum of
  its response tokens' log-probabilities (the prompt's are masked), read at those positions only
  (``logits_to_keep``).
- The reference model is the starting model: with LoRA (the task's default) the same weights with the adapter
  disabled (peft's ``disable_adapter()``), so there is no second copy in memory. It does not change, so its
  log-probabilities are computed once per example, before the first step (:meth:`DPORecipe.start`: in eval mode,
  under ``no_grad``, the ranks sharing the work), and kept in a tensor indexed by example that each batch reads.
  Because they are computed before any step, full fine-tuning needs no frozen copy either: the cache is the
  reference.
- The loss (``loss_type``), with ``h = (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))``:
  ``sigmoid`` (DPO, Rafailov et al. 2023) ``-log sigmoid(beta h)``; ``ipo`` (Azar et al. 2023)
  ``(h - 1/(2 beta))^2``, here on summed, not length-averaged, log-probabilities; ``hinge`` (SLiC)
  ``max(0, 1 - beta h)``; the mean over the pairs.
- Validation: the loss, ``preference_accuracy`` (the model's log-probability of the chosen side above the
  rejected's; ties count half), ``reward_accuracy`` (the implicit reward ``beta h`` above 0) and ``reward_margin``
  (its mean).
- The output directory is the causal-lm task's: the merged model and, for LoRA, the adapter alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from kftune.settings.fields import setting
from kftune.tasks.dpo.data import REJECTED_IDS, REJECTED_LABELS
from kftune.training.causal_lm_recipe import EVAL_TOKENS, CausalLMRecipe, next_token_targets, token_batches
from kftune.training.precision import autocast
from kftune.training.recipe import Run, Split


@dataclass
class Preference:
    """Preference optimisation."""

    beta: float = setting(0.1, searchable=True, gt=0)
    """DPO's beta: how far the trained model may move from the reference (the starting model); larger stays closer. It also scales the implicit reward (reward_accuracy, reward_margin)."""  # noqa: E501
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """The preference loss: sigmoid (DPO), ipo or hinge (SLiC), each on the difference of the chosen and rejected log-probability ratios to the reference."""  # noqa: E501


class PairCollator:
    """Batches of preference pairs by example index: the chosen sequences then the rejected ones, padded
    (``attention_mask``) or packed (``position_ids``), with ``segments`` (each position's sequence number) and, once
    :attr:`reference` is computed, the pairs' reference log-probabilities (``reference``: pairs x 2)."""

    def __init__(self, split, pad_id: int, max_length: int = 0, packing: bool = False):
        sides = [(list(split["input_ids"]), list(split["labels"])),
                 (list(split[REJECTED_IDS]), list(split[REJECTED_LABELS]))]
        if max_length:
            sides = [([r[:max_length] for r in ids], [r[:max_length] for r in labels]) for ids, labels in sides]
        self.ids = [ids for ids, _ in sides]
        self.targets = [[next_token_targets(r) for r in labels] for _, labels in sides]
        self.pad_id, self.packing = pad_id, packing
        self.reference: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids[0])

    def lengths(self) -> np.ndarray:
        return np.asarray([max(len(c), len(r)) for c, r in zip(*self.ids, strict=True)])

    def sequences(self, indices) -> dict[str, torch.Tensor]:
        """The pairs ``indices`` as sequences (chosen ones first), without the reference."""
        rows = [self.ids[side][i] for side in (0, 1) for i in indices]
        targets = [self.targets[side][i] for side in (0, 1) for i in indices]
        if self.packing:
            return {
                "input_ids": torch.tensor([[t for r in rows for t in r]], dtype=torch.long),
                "position_ids": torch.tensor([[p for r in rows for p in range(len(r))]], dtype=torch.long),
                "targets": torch.tensor([[t for r in targets for t in r]], dtype=torch.long),
                "segments": torch.tensor([[s for s, r in enumerate(rows) for _ in r]], dtype=torch.long),
            }
        width = max(len(r) for r in rows)
        return {
            "input_ids": torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rows], dtype=torch.long),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long),
            "targets": torch.tensor([r + [-100] * (width - len(r)) for r in targets], dtype=torch.long),
            "segments": torch.arange(len(rows)).unsqueeze(1).expand(-1, width).contiguous(),
        }

    def __call__(self, indices) -> dict[str, torch.Tensor]:
        batch = self.sequences(indices)
        if self.reference is not None:
            batch["reference"] = self.reference[torch.as_tensor(np.asarray(indices), dtype=torch.long)]
        return batch


MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def sequence_logps(model, batch: dict) -> torch.Tensor:
    """Each sequence's log-probability summed over its response tokens (fp32, one per sequence of ``batch``); the
    vocabulary projection runs only at the positions that predict one of them."""
    targets, segments = batch["targets"], batch["segments"]
    keep = (targets != -100).any(0).nonzero().squeeze(-1)
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    # use_cache=False: without a cache, transformers reads packed position ids as separate sequences
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    kept = targets[:, keep]
    token_logps = -torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), kept.flatten(), ignore_index=-100,
                                                     reduction="none")
    count = int(segments.max()) + 1
    owner = segments[:, keep].flatten()
    return torch.zeros(count, device=token_logps.device).index_add(0, owner, token_logps)


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                    reference_rejected: torch.Tensor, beta: float, loss_type: str = "sigmoid") -> torch.Tensor:
    """The mean over the pairs of the preference loss (see the module docstring)."""
    h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    if loss_type == "sigmoid":
        losses = -torch.nn.functional.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"loss_type must be sigmoid, ipo or hinge, got {loss_type!r}")
    return losses.mean()


def reference_model(model):
    """A context in which ``model`` computes as the reference: with its adapter disabled (a peft model), else as it
    is (full fine-tuning, before its first step)."""
    model = getattr(model, "module", model)  # DistributedDataParallel's wrapper
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


@torch.no_grad()
def pair_logps(model, collate: PairCollator, batch_size: int, device, precision: str,
               indices: np.ndarray | None = None) -> torch.Tensor:
    """(pairs x 2) log-probabilities of ``model`` of the chosen and rejected sides of the pairs ``indices`` (all by
    default) in eval mode, in packed batches by length; rows of the other pairs are 0."""
    was_training = model.training
    model.eval()
    out = torch.zeros(len(collate), 2)
    lengths = collate.lengths()
    indices = np.arange(len(lengths)) if indices is None else np.asarray(indices)
    packed, collate.packing = collate.packing, True
    try:
        for part in token_batches(lengths[indices], batch_size, EVAL_TOKENS // 2):  # two sequences a pair
            chosen = indices[part]
            batch = {k: v.to(device) for k, v in collate.sequences(chosen).items()}
            with autocast(device, precision):
                logps = sequence_logps(model, batch).float().cpu()
            out[torch.as_tensor(chosen)] = logps.view(2, -1).T
    finally:
        collate.packing = packed
        model.train(was_training)
    return out


def reference_logps(model, collate: PairCollator, batch_size: int, device, precision: str) -> torch.Tensor:
    """The reference's log-probabilities of every pair of ``collate`` (pairs x 2), computed once: each rank of a
    distributed run computes every ``world``-th pair, and the ranks sum their parts."""
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    with reference_model(model):
        logps = pair_logps(model, collate, batch_size, device, precision, np.arange(rank, len(collate), world))
    if distributed:
        logps = logps.to(device)
        dist.all_reduce(logps)
        logps = logps.cpu()
    return logps


def preference_scores(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> dict[str, np.ndarray]:
    """Per pair (``policy``, ``reference``: pairs x 2 log-probabilities): ``preference`` (1 when the policy gives
    the chosen side the higher log-probability, 0.5 on a tie, else 0), ``reward_correct`` (1 when the implicit
    reward of the chosen side is the higher) and ``reward_margin`` (the difference of the implicit rewards)."""
    policy, reference = policy.double().numpy(), reference.double().numpy()
    margin = beta * ((policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1]))
    preference = np.where(policy[:, 0] > policy[:, 1], 1.0, np.where(policy[:, 0] == policy[:, 1], 0.5, 0.0))
    return {"preference": preference, "reward_correct": (margin > 0).astype(np.float64), "reward_margin": margin}


class DPORecipe(CausalLMRecipe):
    """The :class:`~kftune.training.recipe.Recipe` of task dpo (see the module docstring): the causal-lm recipe's
    model and output, with preference pairs, the reference cache and the preference loss."""

    def collator(self, split, tokenizer, run: Run) -> PairCollator:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return PairCollator(split, pad_id, run.config.max_train_length, run.config.packing)

    def start(self, model, train: Split, validation: Split, run: Run) -> None:
        """Compute the reference's log-probabilities of every training and validation pair, once, before the first
        step (and before a resumed run restores its trained weights)."""
        for split in (train, validation):
            split.collate.reference = reference_logps(model, split.collate, run.config.per_device_eval_batch_size,
                                                      run.device, run.precision)

    def loss(self, model, batch: dict[str, torch.Tensor], config) -> torch.Tensor:
        logps = sequence_logps(model, batch)
        pairs = len(batch["reference"])
        reference = batch["reference"].to(logps.dtype)
        return preference_loss(logps[:pairs], logps[pairs:], reference[:, 0], reference[:, 1], config.beta,
                               config.loss_type)

    def validate(self, model, split: Split, run: Run) -> dict[str, float]:
        collate = split.collate
        policy = pair_logps(model, collate, run.config.per_device_eval_batch_size, run.device, run.precision)
        reference = collate.reference
        loss = preference_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], run.config.beta,
                               run.config.loss_type)
        scores = preference_scores(policy, reference, run.config.beta)
        return {"loss": float(loss), "preference_accuracy": float(scores["preference"].mean()),
                "reward_accuracy": float(scores["reward_correct"].mean()),
                "reward_margin": float(scores["reward_margin"].mean())}
