"""The training loop's recipe for the encoder tasks (classification, regression, multilabel, token classification).

An encoder with a task head (``task.head``), run padding-free where the architecture allows
(:mod:`kftune.training.unpadded`); batches padded to their longest text, with the task's labels
(``task.label_tensor``); the task's loss (``task.loss``) and validation scores (``task.scores``); the trained model
written by :func:`~kftune.models.encoder.save_encoder_model`, with the task's ``task.json`` as training leaves it
(``task.after_training``: e.g. multilabel's thresholds, picked on the validation logits).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from kftune.data.schema import LABELS_FILE, TASK_FILE
from kftune.models.encoder import build_encoder_model, save_encoder_model
from kftune.training.precision import autocast
from kftune.training.recipe import Run, Split
from kftune.training.unpadded import enable_padding_free

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Collator:
    """Pads a list of examples to the longest one in the batch (dynamic padding); the labels are the task's
    (``task.label_tensor``: class ids, normalised scores, multi-hot rows, per-piece tags)."""

    def __init__(self, split, tokenizer, max_length: int, task, info: dict | None = None):
        self.task, self.info = task, info or {}
        # Plain lists: indexing a datasets column element by element costs milliseconds per batch
        # (bench/train_step.py times collation both ways).
        self.columns = {name: list(split[name]) for name in (*MODEL_INPUTS, "label") if name in split.column_names}
        self.pad_id = tokenizer.pad_token_id or 0
        if max_length:
            self._truncate(max_length)

    def _truncate(self, max_length: int) -> None:
        """Cut longer texts to ``max_length`` tokens, keeping the closing special token ([SEP]); labels as the task
        cuts them (per-piece labels with the pieces)."""
        for name in MODEL_INPUTS:
            if name not in self.columns:
                continue
            if name == "input_ids":  # the last piece is [SEP]
                cut = [r[: max_length - 1] + r[-1:] if len(r) > max_length else r for r in self.columns[name]]
            else:
                cut = [r[:max_length] for r in self.columns[name]]
            self.columns[name] = cut
        if "label" in self.columns:
            self.columns["label"] = self.task.truncate_labels(self.columns["label"], max_length)

    def __call__(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        ids = [self.columns["input_ids"][i] for i in indices]
        width = max(len(x) for x in ids)
        batch = {}
        for name in MODEL_INPUTS:
            if name not in self.columns:
                continue
            pad = self.pad_id if name == "input_ids" else 0
            rows = [self.columns[name][i] for i in indices]
            batch[name] = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        batch["labels"] = self.task.label_tensor([self.columns["label"][i] for i in indices], self.info)
        return batch


@torch.no_grad()
def split_logits(model, collate: Collator, lengths: np.ndarray, batch_size: int, device, precision: str):
    """(mean loss, logits, stored labels) of ``model`` on one split, in the split's order (run in length order:
    less padding)."""
    model.eval()
    losses, logits, order = [], [], np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        batch = {k: v.to(device) for k, v in collate(order[start : start + batch_size]).items()}
        with autocast(device, precision):
            out = model(**batch)
        losses.append(out.loss.float().item() * len(batch["labels"]))
        logits.append(out.logits.float().cpu().numpy())
    model.train()
    if logits[0].ndim == 3:  # per-piece logits: pad every batch to the widest
        width = max(x.shape[1] for x in logits)
        logits = [np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0))) for x in logits]
    ordered = np.empty((len(order), *logits[0].shape[1:]), dtype=np.float32)
    ordered[order] = np.concatenate(logits)
    return sum(losses) / len(order), ordered, collate.task.label_array(collate.columns["label"])


class EncoderRecipe:
    """The :class:`~kftune.training.recipe.Recipe` of an encoder ``task`` (an ``EncoderTask``: its hooks)."""

    def __init__(self, task):
        self.task = task
        self._trivial: dict[str, float] | None = None

    def build_model(self, run: Run) -> torch.nn.Module:
        model = build_encoder_model(run.config, self.task.head(run.info), run.base_path, self.task)
        self.task.init_head(model, run.info)
        if run.config.packing:
            enable_padding_free(model)
        return model

    def trains_adapters_only(self, config) -> bool:
        return False  # a peft classifier's head is trained in full: checkpoints keep every weight

    def collator(self, split, tokenizer, run: Run) -> Collator:
        return Collator(split, tokenizer, run.config.max_train_length, self.task, run.info)

    def start(self, model, train: Split, validation: Split, run: Run) -> None:
        """Nothing to compute before the first step."""

    def loss(self, model, batch: dict[str, torch.Tensor], config) -> torch.Tensor:
        return self.task.loss(model, batch, config)

    def validate(self, model, split: Split, run: Run) -> dict[str, float]:
        loss, logits, labels = split_logits(model, split.collate, split.lengths, run.config.per_device_eval_batch_size,
                                            run.device, run.precision)
        if self._trivial is None:  # the split and the trivial answer stay the same: scored once
            trivial = self.task.trivial_logits(logits, run.info)
            self._trivial = {} if trivial is None else self.task.scores(trivial, labels, run.info)
        return {"loss": loss, **self.task.scores(logits, labels, run.info)}

    def trivial_scores(self) -> dict[str, float]:
        return self._trivial or {}

    def vocabulary_size(self, model) -> int:
        return 0  # a head over labels, not over the vocabulary

    def write_model(self, model, directory: Path, validation: Split, run: Run) -> None:
        """The model as :func:`~kftune.models.encoder.load_encoder_model` reads it, its label names, and ``task.json``
        with what the task adds after training, given the model's validation logits."""
        save_encoder_model(model, directory, run.config.training_mode)
        if (run.dataset_dir / LABELS_FILE).is_file():
            shutil.copy(run.dataset_dir / LABELS_FILE, directory / LABELS_FILE)
        _, logits, labels = split_logits(model, validation.collate, validation.lengths,
                                         run.config.per_device_eval_batch_size, run.device, run.precision)
        info = self.task.after_training(logits, labels, run.info)
        (directory / TASK_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
