"""What travels between stages: column names, the label mapping, the dataset layout.

A preprocessed dataset artifact is a directory::

    splits/          datasets.DatasetDict.save_to_disk: train / validation / test
                     columns: text (cleaned), label (int id), input_ids,
                     attention_mask, [token_type_ids], length (tokens)
    labels.json      {"id2label": {"0": "negative", ...}, "label2id": {...}}
    tokenizer/       the tokenizer the splits were encoded with
    stats.json       what preprocessing did (rows removed per rule, split sizes, ...)

``task.json`` names the task and holds what it needs to know of the labels (``labels`` in id
order, a regression target's ``target_mean``/``target_std``; a trained multi-label model's adds
``thresholds``); train copies it into the model and export into the export directory.

A causal-lm dataset has no labels.json; its splits hold ``messages`` (the conversation as
JSON), ``prompt`` (rendered up to the last assistant turn), ``reference`` (that turn),
``input_ids``, ``labels`` (-100 outside assistant turns), ``length``; and ``task.json`` says
the task, the allowed answers of short-answer data and the token budgets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TEXT = "text"
LABEL = "label"
LENGTH = "length"
SPLITS = ("train", "validation", "test")

SPLITS_DIR = "splits"
LABELS_FILE = "labels.json"
TOKENIZER_DIR = "tokenizer"
STATS_FILE = "stats.json"
TASK_FILE = "task.json"
EXPORT_REPORT = "export_report.json"
"""The export step's report in an export directory: its task, format, parity figures, ``max_seq_length``."""


@dataclass(frozen=True)
class LabelMap:
    """Label names in id order; ends up as ``id2label``/``label2id`` in the model config."""

    names: tuple[str, ...]

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def save(self, path: Path) -> None:
        doc = {"id2label": {str(i): n for i, n in self.id2label.items()}, "label2id": self.label2id}
        path.write_text(json.dumps(doc, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> LabelMap:
        doc = json.loads(path.read_text(encoding="utf-8"))
        id2label = doc["id2label"]
        return cls(tuple(id2label[str(i)] for i in range(len(id2label))))


def load_splits(dataset_dir: str | Path):
    """Load a preprocessed dataset artifact: (DatasetDict, LabelMap)."""
    import datasets

    dataset_dir = Path(dataset_dir)
    splits = datasets.load_from_disk(str(dataset_dir / SPLITS_DIR))
    labels = dataset_dir / LABELS_FILE
    return splits, LabelMap.load(labels) if labels.is_file() else None


def dataset_task(dataset_dir: str | Path) -> dict:
    """The task's part of a dataset, model or export directory: its ``task.json``, or, for one written before
    tasks had one, the labels of its ``labels.json`` (and no ``task``: the registry reads that as its default
    task's, :func:`kftune.tasks.resolve_task`)."""
    directory = Path(dataset_dir)
    path = directory / TASK_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    labels = directory / LABELS_FILE
    return {"labels": list(LabelMap.load(labels).names) if labels.is_file() else []}
