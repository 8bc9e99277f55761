"""What travels between stages: column names, the label mapping, the dataset layout.

Preprocess writes two artifacts. The dataset artifact, which every stage that trains or chooses is
given (train, tune's trials, pretrain), is a directory::

    splits/          datasets.DatasetDict.save_to_disk: train / validation (never test)
                     columns: text (cleaned), label (int id), input_ids,
                     attention_mask, [token_type_ids], length (tokens)
    labels.json      {"id2label": {"0": "negative", ...}, "label2id": {...}}
    tokenizer/       the tokenizer the splits were encoded with
    stats.json       what preprocessing did (rows removed per rule, split sizes, ...)

The test split artifact, given to evaluate and to export's parity check only, is a directory::

    test/            datasets.Dataset.save_to_disk: the test split, in the columns of the others

So no stage before evaluate can read a test example: it is not in what they are given, and
:func:`load_splits` refuses to give a ``test`` split; :func:`load_test_split` reads the test split
artifact. ``stats.json`` keeps the test split's size and label distribution (the data report's
figures), not its examples.

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

from kftune.errors import DataError

TEXT = "text"
LABEL = "label"
LENGTH = "length"
TRAINING_SPLITS = ("train", "validation")
"""The splits of the dataset artifact: all that training, search and pretraining can see."""
TEST_SPLIT = "test"
"""The split that only evaluate and export see, in its own artifact."""
SPLITS = (*TRAINING_SPLITS, TEST_SPLIT)
"""Every split preprocess makes, in the data report's order."""

SPLITS_DIR = "splits"
"""The dataset artifact's splits (train and validation)."""
TEST_DIR = "test"
"""The test split artifact's one directory."""
LABELS_FILE = "labels.json"
TOKENIZER_DIR = "tokenizer"
STATS_FILE = "stats.json"
TASK_FILE = "task.json"
EXPORT_REPORT = "export_report.json"
"""The export step's report in an export directory: its task, format, parity figures, ``max_seq_length``."""
MODEL_CARD = "README.md"
"""The model card in an export directory (Hugging Face's convention: YAML metadata, then Markdown)."""


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


class TrainingSplits(dict):
    """The train and validation splits of a dataset artifact, by name. Asking it for the test split is an error that
    says where that split is: not here."""

    def __missing__(self, name):
        if name == TEST_SPLIT:
            raise DataError("the dataset artifact holds the train and validation splits only; the test split is "
                            "preprocess's test_split artifact, which only evaluate and export are given "
                            "(kftune.data.schema.load_test_split)")
        raise KeyError(name)


def load_splits(dataset_dir: str | Path) -> tuple[TrainingSplits, LabelMap | None]:
    """Load a preprocessed dataset artifact: (its train and validation splits, its LabelMap or None).

    A directory that is not one is a :class:`DataError`: the test split artifact, a directory without ``splits/``,
    and a dataset written before the test split had its own artifact (its ``splits/`` hold ``test`` too).
    """
    import datasets

    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / SPLITS_DIR).is_dir():
        what = ("that is the test split artifact, which only evaluate and export read"
                if (dataset_dir / TEST_DIR).is_dir() else f"no {SPLITS_DIR}/ directory")
        raise DataError(f"{dataset_dir}: {what}; expected preprocess's dataset artifact (train and validation)")
    splits = datasets.load_from_disk(str(dataset_dir / SPLITS_DIR))
    if TEST_SPLIT in splits:
        raise DataError(f"{dataset_dir}: its {SPLITS_DIR}/ hold a test split beside train and validation (written "
                        "before the test split had its own artifact); preprocess the data again")
    labels = dataset_dir / LABELS_FILE
    return TrainingSplits(splits), LabelMap.load(labels) if labels.is_file() else None


def load_test_split(test_dir: str | Path):
    """Load preprocess's test split artifact: the test examples (a ``datasets.Dataset``), in the columns of the
    dataset artifact's splits. Only evaluate and export's parity check read it."""
    import datasets

    test_dir = Path(test_dir)
    if not (test_dir / TEST_DIR).is_dir():
        what = ("that is the dataset artifact (train and validation)" if (test_dir / SPLITS_DIR).is_dir()
                else f"no {TEST_DIR}/ directory")
        raise DataError(f"{test_dir}: {what}; expected preprocess's test_split artifact")
    return datasets.load_from_disk(str(test_dir / TEST_DIR))


def save_splits(dataset, dataset_dir: Path, test_dir: Path) -> None:
    """Write the encoded splits (a ``datasets.DatasetDict`` of :data:`SPLITS`) apart: train and validation into the
    dataset artifact's ``splits/``, the test split into the test split artifact."""
    import datasets

    datasets.DatasetDict({name: dataset[name] for name in TRAINING_SPLITS}).save_to_disk(str(dataset_dir / SPLITS_DIR))
    dataset[TEST_SPLIT].save_to_disk(str(test_dir / TEST_DIR))


def split_files(dataset_dir: str | Path, test_dir: str | Path | None) -> list[tuple[str, Path]]:
    """The data files of every split, in a fixed order: (name, path) with the name relative to its artifact
    (``splits/train/data-00000-of-00001.arrow``, ..., ``test/data-00000-of-00001.arrow``); without ``test_dir``,
    train and validation's only."""
    found = []
    artifacts = ((Path(dataset_dir), SPLITS_DIR),) + (((Path(test_dir), TEST_DIR),) if test_dir else ())
    for root, top in artifacts:
        found += sorted((path.relative_to(root).as_posix(), path) for path in (root / top).rglob("*.arrow"))
    return found


def splits_sha256(dataset_dir: str | Path, test_dir: str | Path | None) -> str:
    """One sha256 of the examples preprocess wrote (train and validation in the dataset artifact ``dataset_dir``, test
    in the test split artifact ``test_dir``; without it, train and validation's): over each split data file's name
    and sha256, one line each, in :func:`split_files` order. Only the Arrow data files count, not ``state.json``'s
    cache fingerprints."""
    import hashlib

    from kftune.storage.checksums import sha256_of

    files = split_files(dataset_dir, test_dir)
    if not files:
        raise DataError(f"{dataset_dir}, {test_dir}: no split data files (*.arrow); expected preprocess's artifacts")
    return hashlib.sha256("".join(f"{name}  {sha256_of(path)}\n" for name, path in files).encode()).hexdigest()


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
