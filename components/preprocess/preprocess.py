"""Clean, deduplicate, split and tokenize the data: the preprocess stage.

``preprocess`` decides the task where it is ``auto`` (once: later stages read it from the
dataset), asks the task to read, clean, sample and check its data (:meth:`~kftune.tasks.base.Task.prepare`:
every problem with the input shows up there, before a tokenizer loads), splits the examples
seeded into train / validation / test (stratified by the task's strata where they allow it),
optionally augments the train split, has the task tokenize each split with the model's fast
tokenizer and writes the two artifacts described in :mod:`kftune.data.schema`: the dataset (train and
validation, labels, tokenizer, task), which training and search are given, and the test split apart.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from kftune.data.bundled import resolve_model
from kftune.data.files import read_frame
from kftune.data.schema import LABEL, LENGTH, SPLITS, STATS_FILE, TASK_FILE, TEXT, TOKENIZER_DIR, save_splits
from kftune.errors import ConfigError
from kftune.storage.atomic import atomic_directory
from kftune.tasks import AUTO, BUNDLED_TASK_DATA, detect_task, file_task, task_named, with_task
from kftune.tasks.base import Prepared

log = logging.getLogger(__name__)


def read_data(config) -> tuple:
    """``config`` with its task decided where it is ``auto`` (from the data, which is read for that: returned so it
    is read once), and the reason, for the log and the data report."""
    if config.task != AUTO:
        return config, None, "set"
    frame = None
    if config.data in BUNDLED_TASK_DATA:
        task, reason = BUNDLED_TASK_DATA[config.data], "the bundled data of that task"
    elif file_task(config.data):  # a file whose name says its task (CoNLL-style text), not a table read_frame reads
        task, reason = file_task(config.data), f"{config.data}: the file name says so"
    else:
        frame, source = read_frame(config.data, config.data_format)
        task, reason = detect_task(frame, config)
        reason = f"{source}: {reason}"
    log.info("task auto: %s (%s)", task, reason)
    return with_task(config, task), frame, f"auto: {reason}"


def prepare(config, frame: pd.DataFrame | None = None) -> Prepared:
    """Read, clean, sample and check the input as the task says (deciding the task first where it is ``auto``).

    Everything that can be wrong with the input shows up here, before any model is loaded; the CLI calls it to fail
    fast before starting a pipeline.
    """
    if config.task == AUTO:
        config, frame, _ = read_data(config)
    config.validate()
    task = task_named(config.task)
    owner = BUNDLED_TASK_DATA.get(config.data)
    if owner and owner != config.task:
        raise ConfigError(f"data {config.data} is the bundled data of task {owner}; task {config.task} takes "
                          f"{task.defaults.get('data') or 'data of its own (set data)'}")
    if config.data == AUTO:
        raise ConfigError(f"task {config.task} has no bundled data; set data (a file, directory or URI)")
    return task.prepare(config, frame)


def split_dataset(frame: pd.DataFrame, config, strata=None, strata_checked: bool = False) -> dict[str, pd.DataFrame]:
    """Seeded train / validation / test split, stratified by ``strata(part)`` (the task's) where they allow it,
    else random; ``strata_checked``: the task proved them splittable already."""
    from sklearn.model_selection import train_test_split

    def split(part: pd.DataFrame, size: float):
        stratify = strata(part) if strata else None
        if stratify is not None and not strata_checked:
            counts = stratify.value_counts()
            test_rows = int(len(part) * size)
            if counts.min() < 2 or test_rows < len(counts) or len(part) - test_rows < len(counts):
                log.info("split not stratified: %d strata are too many for %d rows", len(counts), len(part))
                stratify = None
        return train_test_split(part, test_size=size, stratify=stratify, random_state=config.seed)

    rest, test = split(frame, config.test_fraction)
    val_share = config.validation_fraction / (1 - config.test_fraction)
    train, validation = split(rest, val_share)
    return {
        "train": train.reset_index(drop=True),
        "validation": validation.reset_index(drop=True),
        "test": test.reset_index(drop=True),
    }


def augment_texts(
    texts: list[str], copies: int, probability: float, seed: int
) -> list[tuple[int, str]]:
    """Seeded word-level noise: random deletion, swap and replacement.

    Returns ``(source_index, noisy_text)`` pairs; replacement words are drawn from the
    vocabulary of ``texts`` itself (the training split), so no outside resource is needed.
    """
    rng = random.Random(seed)
    vocabulary = sorted({w for t in texts for w in t.split()})
    out = []
    for _ in range(copies):
        for i, text in enumerate(texts):
            words = text.split()
            words = [w for w in words if rng.random() >= probability] or words[:1]
            for _ in range(max(1, int(probability * len(words))) if len(words) > 1 else 0):
                a, b = rng.randrange(len(words)), rng.randrange(len(words))
                words[a], words[b] = words[b], words[a]
            words = [rng.choice(vocabulary) if rng.random() < probability else w for w in words]
            noisy = " ".join(words)
            if noisy != text:
                out.append((i, noisy))
    return out


def augment(train: pd.DataFrame, config) -> pd.DataFrame:
    """The train split with noisy copies of its texts (``augment_copies`` per example) added after it."""
    noisy = augment_texts(train[TEXT].tolist(), config.augment_copies, config.augment_probability, config.seed)
    extra = pd.DataFrame({TEXT: [t for _, t in noisy], LABEL: [train[LABEL].iloc[i] for i, _ in noisy]})
    return pd.concat([train, extra], ignore_index=True)


def fast_tokenizer(model: str):
    """The pretrained model's fast tokenizer (kftune needs word and offset mappings)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model), use_fast=True)
    if not tokenizer.is_fast:
        raise ConfigError(f"model {model!r} has no fast tokenizer; kftune needs one")
    return tokenizer


def dataset_stats(config, decided: str, task, prepared: Prepared, dataset, info: dict, augmented: int) -> dict:
    """What the data report shows: the common figures, then the task's (which refine them)."""
    all_lengths = np.concatenate([np.asarray(dataset[name][LENGTH]) for name in SPLITS])
    stats = {
        "task": config.task,
        "task_decided": decided,
        "source": prepared.source,
        "rows_read": prepared.rows_read,
        "removed": prepared.removed,
        "rows_clean": prepared.rows_read - sum(prepared.removed.values()),
        "rows_used": int(len(prepared.frame)),
        "augmented_rows": augmented,
        "labels": task.stats_labels(info),
        "split_sizes": {name: len(dataset[name]) for name in SPLITS},
        "label_distribution": {name: task.distribution(dataset[name], info) for name in SPLITS},
        "token_length": {
            "p50": float(np.percentile(all_lengths, 50)),
            "p95": float(np.percentile(all_lengths, 95)),
            "max": int(all_lengths.max()),
            "truncated_fraction": float((all_lengths >= config.max_seq_length).mean()),
        },
        **prepared.stats,
        "config": asdict(config),
    }
    for key, value in task.dataset_stats(dataset, info, config, prepared).items():
        if isinstance(value, dict) and isinstance(stats.get(key), dict):
            stats[key] = {**stats[key], **value}
        else:
            stats[key] = value
    return stats


def preprocess(config, output_dir: str | Path, test_dir: str | Path) -> dict:
    """Run the whole stage; write the dataset artifact (train and validation) to ``output_dir`` and the test split
    artifact to ``test_dir``; return the stats."""
    if Path(output_dir).resolve() == Path(test_dir).resolve():
        raise ConfigError(f"{output_dir}: the dataset and the test split are two artifacts; give them two paths")
    config, frame, decided = read_data(config)
    task = task_named(config.task)
    prepared = prepare(config, frame)
    if config.augment_copies and not task.augmentable:
        raise ConfigError(f"augment_copies: task {config.task} has no texts to augment; set it to 0")

    info = {"task": config.task, **task.data_info(prepared, config)}
    splits = split_dataset(task.store_labels(prepared.frame, info), config, lambda part: task.strata(part, info),
                           task.strata_checked)
    info |= task.train_info(splits["train"], info)  # before augmenting: statistics of the rows read
    augmented = 0
    if config.augment_copies:
        rows = len(splits["train"])
        splits["train"] = augment(splits["train"], config)
        augmented = len(splits["train"]) - rows
    tokenizer = prepared.tokenizer or fast_tokenizer(config.model)
    dataset = task.encode(splits, info, tokenizer, config, prepared)
    stats = dataset_stats(config, decided, task, prepared, dataset, info, augmented)
    with atomic_directory(output_dir) as tmp, atomic_directory(test_dir) as test_tmp:
        save_splits(dataset, tmp, test_tmp)
        task.write_files(tmp, info)
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2), encoding="utf-8")
    log.info("preprocessed %d rows -> %s (removed %s)", prepared.rows_read, stats["split_sizes"],
             {k: v for k, v in prepared.removed.items() if v})
    stats["_lengths"] = {name: np.asarray(dataset[name][LENGTH]) for name in SPLITS}
    return stats
