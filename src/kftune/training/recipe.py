"""What a task brings to the training loop: its model, batches, objective, validation and output.

The loop is the same for every task; it asks the task for its :class:`Recipe` (``task.recipe()``) and calls
nothing else of it. Two recipes exist: the encoder one (:class:`~kftune.training.encoder_recipe.EncoderRecipe`:
classification, regression, multilabel, token classification, each through its task's hooks) and the causal-LM
one (:class:`~kftune.training.causal_lm_recipe.CausalLMRecipe`), which the preference task's extends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class Run:
    """What a recipe needs to know of the run it serves."""

    config: object
    """The TrainConfig (its task resolved)."""
    dataset_dir: Path
    info: dict
    """The dataset's ``task.json``: labels and what else the task keeps about them."""
    base_path: str
    """Directory of the pretrained model."""
    device: torch.device
    precision: str
    """The autocast precision: ``bf16``, ``fp16`` or ``no``."""


@dataclass(frozen=True)
class Split:
    """A tokenized split as the loop draws from it: the collator of example indices, and each example's length."""

    collate: Callable[[np.ndarray], dict[str, torch.Tensor]]
    lengths: np.ndarray


class Recipe(Protocol):
    def build_model(self, run: Run) -> torch.nn.Module:
        """The model to train, as loaded (on the CPU, unless quantized on loading): the loop places it."""

    def trains_adapters_only(self, config) -> bool:
        """True when the base model's weights are frozen: checkpoints then keep the trained weights only."""

    def collator(self, split, tokenizer, run: Run) -> Callable[[np.ndarray], dict[str, torch.Tensor]]:
        """Batches of a tokenized split's examples, by index."""

    def start(self, model, train: Split, validation: Split, run: Run) -> None:
        """Before the first step (and before a resumed run restores its weights), with ``model`` placed: what the
        task computes once from the starting model (a preference task's reference log-probabilities)."""

    def loss(self, model, batch: dict[str, torch.Tensor], config) -> torch.Tensor:
        """The loss a training step minimises on ``batch``."""

    def validate(self, model, split: Split, run: Run) -> dict[str, float]:
        """Loss and the task's validation scores of ``model`` on ``split``."""

    def trivial_scores(self) -> dict[str, float]:
        """The task's trivial answer scored on the validation split, once :meth:`validate` has run (empty: the task
        has none): early stopping waits until the model beats it."""

    def vocabulary_size(self, model) -> int:
        """The vocabulary the model's output layer spans, for the CPU memory estimate (0: no such layer)."""

    def write_model(self, model, directory: Path, validation: Split, run: Run) -> None:
        """Write the trained ``model`` into ``directory``, with the task's part (``task.json``)."""
