"""Clean, deduplicate, split and tokenize labelled text.

``preprocess`` is the stage: it reads the input, cleans it rule by rule (counting what each
rule removes), optionally subsamples, splits stratified and seeded into train / validation /
test, optionally augments the train split, tokenizes once with the model's fast tokenizer and
writes the dataset artifact described in :mod:`kftune.components.common.schema`.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from kftune.components.common.atomic import atomic_directory
from kftune.components.common.bundled import BUNDLED_DATA, INSTRUCTION_DATA, resolve_model
from kftune.components.common.chat import PLAIN_TEMPLATE
from kftune.components.common.errors import ConfigError, DataError
from kftune.components.common.schema import (
    LABEL,
    LABELS_FILE,
    LENGTH,
    SPLITS,
    SPLITS_DIR,
    STATS_FILE,
    TEXT,
    TOKENIZER_DIR,
    LabelMap,
)
from kftune.components.common.text import clean_text
from kftune.components.preprocess.config import PreprocessConfig
from kftune.components.preprocess.reader import read_frame, read_labelled_data

log = logging.getLogger(__name__)

_SPACE = re.compile(r"\s+")
_NOT_WORD = re.compile(r"[^\w\s]")

# Removal rules in the order they apply; the report lists them in this order.
RULES = (
    "missing_text",
    "missing_label",
    "empty_after_cleaning",
    "too_short",
    "too_long",
    "exact_duplicate",
    "normalised_duplicate",
    "conflicting_labels",
)


def normalised_key(text: str) -> str:
    """The key under which near-identical texts count as duplicates: case and punctuation folded."""
    return _SPACE.sub(" ", _NOT_WORD.sub(" ", text.casefold())).strip()


def _normalise_labels(labels: pd.Series) -> pd.Series:
    """Integral numbers become ints, anything else a stripped string; blanks become None."""

    def as_number(value):
        if isinstance(value, bool):
            return None
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value.strip())
        return None

    present = labels[labels.notna()]
    numbers = present.map(as_number)
    if len(present) and numbers.notna().all():
        return labels.map(lambda v: None if pd.isna(v) else as_number(v))
    return labels.map(lambda v: None if pd.isna(v) or not str(v).strip() else str(v).strip())


def clean_dataset(frame: pd.DataFrame, config: PreprocessConfig) -> tuple[pd.DataFrame, dict]:
    """Apply the cleaning rules; return the cleaned frame and rows removed per rule."""
    removed = dict.fromkeys(RULES, 0)
    frame = frame.copy()
    frame[LABEL] = _normalise_labels(frame[LABEL])

    def drop(mask: pd.Series, rule: str) -> None:
        nonlocal frame
        removed[rule] += int(mask.sum())
        frame = frame[~mask]

    drop(frame[TEXT].isna() | frame[TEXT].map(lambda t: not isinstance(t, str)), "missing_text")
    drop(frame[LABEL].isna(), "missing_label")
    raw = frame[TEXT]
    frame = frame.assign(**{TEXT: raw.map(clean_text)})
    frame["_raw"] = raw
    drop(frame[TEXT].str.len() == 0, "empty_after_cleaning")
    drop(frame[TEXT].str.len() < config.min_chars, "too_short")
    drop(frame[TEXT].str.len() > config.max_chars, "too_long")

    frame["_key"] = frame[TEXT].map(normalised_key)
    labels_per_key = frame.groupby("_key")[LABEL].nunique()
    conflicting = frame["_key"].isin(labels_per_key.index[labels_per_key > 1])
    drop(conflicting, "conflicting_labels")
    drop(frame.duplicated("_raw"), "exact_duplicate")
    drop(frame.duplicated("_key"), "normalised_duplicate")
    return frame[[TEXT, LABEL]].reset_index(drop=True), removed


def make_label_map(labels: pd.Series) -> LabelMap:
    """Sorted label values (numerically for integer labels) in id order."""
    return LabelMap(tuple(str(v) for v in sorted(labels.unique())))


def _check_splittable(label_counts: Counter, config: PreprocessConfig, source: str) -> None:
    n = sum(label_counts.values())
    k = len(label_counts)
    if n == 0:
        raise DataError(f"{source}: no rows left after cleaning; expected labelled, non-empty texts")
    if k < 2:
        only = next(iter(label_counts))
        raise DataError(
            f"{source}: column {config.label_column!r} has a single class ({only!r}) after "
            "cleaning; "
            "classification needs at least 2"
        )
    rare = [(label, c) for label, c in label_counts.items() if c < 3]
    if rare:
        label, count = rare[0]
        raise DataError(
            f"{source}: class {label!r} has {count} row(s) after cleaning; a stratified "
            "train/validation/test split needs at least 3 per class"
        )
    for name, fraction in (("validation", config.validation_fraction), ("test", config.test_fraction)):
        if int(n * fraction) < k:
            raise DataError(
                f"{source}: {n} rows are too few for a stratified split: the {name} split "
                f"({fraction:.0%}) would get {int(n * fraction)} rows for {k} classes; "
                f"need at least {int(np.ceil(k / fraction))} rows"
            )


def split_dataset(frame: pd.DataFrame, config: PreprocessConfig) -> dict[str, pd.DataFrame]:
    """Stratified, seeded train / validation / test split."""
    from sklearn.model_selection import train_test_split

    rest, test = train_test_split(
        frame, test_size=config.test_fraction, stratify=frame[LABEL], random_state=config.seed
    )
    val_share = config.validation_fraction / (1 - config.test_fraction)
    train, validation = train_test_split(
        rest, test_size=val_share, stratify=rest[LABEL], random_state=config.seed
    )
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


def subsample(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """A stratified, seeded sample of ``max_rows`` rows (all rows if there are fewer)."""
    if not max_rows or max_rows >= len(frame):
        return frame
    from sklearn.model_selection import train_test_split

    counts = frame[LABEL].value_counts()
    stratify = frame[LABEL] if counts.min() >= 2 and max_rows >= len(counts) else None
    sample, _ = train_test_split(frame, train_size=max_rows, stratify=stratify, random_state=seed)
    return sample.reset_index(drop=True)


def prepare_rows(config: PreprocessConfig) -> tuple[pd.DataFrame, int, dict]:
    """Read, clean and sample the input and check it can be split: (rows, rows read, removed).

    Everything that can be wrong with the input shows up here, before any tokenizer or model
    is loaded; the CLI calls it to fail fast before starting a pipeline.
    """
    config.validate()
    if config.data == INSTRUCTION_DATA:
        raise ConfigError(f"data {INSTRUCTION_DATA} is instruction data for task causal-lm; task classification "
                          f"takes labelled text ({BUNDLED_DATA} is the bundled one)")
    frame = read_labelled_data(config.data, config.text_column, config.label_column, config.data_format)
    rows_read = len(frame)
    frame, removed = clean_dataset(frame, config)
    frame = subsample(frame, config.max_rows, config.seed)
    _check_splittable(Counter(frame[LABEL]), config, config.data)
    return frame, rows_read, removed


def preprocess(config: PreprocessConfig, output_dir: str | Path) -> dict:
    """Run the whole stage; write the dataset artifact to ``output_dir``; return its stats."""
    import datasets
    from transformers import AutoTokenizer

    if config.task == "causal-lm":
        return preprocess_instructions(config, output_dir)

    source = config.data
    frame, rows_read, removed = prepare_rows(config)

    label_map = make_label_map(frame[LABEL])
    frame[LABEL] = frame[LABEL].map(lambda v: label_map.label2id[str(v)])
    splits = split_dataset(frame, config)

    augmented = 0
    if config.augment_copies:
        train = splits["train"]
        noisy = augment_texts(
            train[TEXT].tolist(), config.augment_copies, config.augment_probability, config.seed
        )
        extra = pd.DataFrame(
            {TEXT: [t for _, t in noisy], LABEL: [int(train[LABEL].iloc[i]) for i, _ in noisy]}
        )
        augmented = len(extra)
        splits["train"] = pd.concat([train, extra], ignore_index=True)

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model), use_fast=True)
    if not tokenizer.is_fast:
        raise ConfigError(f"model {config.model!r} has no fast tokenizer; kftune needs one")

    def encode(batch):
        encoded = tokenizer(batch[TEXT], truncation=True, max_length=config.max_seq_length)
        encoded[LENGTH] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    features = datasets.Features(
        {TEXT: datasets.Value("string"), LABEL: datasets.Value("int64")}
    )
    dataset = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_pandas(part[[TEXT, LABEL]], features=features, preserve_index=False)
            for name, part in splits.items()
        }
    )
    dataset = dataset.map(encode, batched=True, batch_size=1000, desc="tokenizing")

    lengths = {name: np.asarray(dataset[name][LENGTH]) for name in SPLITS}
    all_lengths = np.concatenate(list(lengths.values()))
    stats = {
        "source": source,
        "rows_read": rows_read,
        "removed": removed,
        "rows_clean": rows_read - sum(removed.values()),
        "rows_used": int(len(frame)),
        "augmented_rows": augmented,
        "labels": list(label_map.names),
        "split_sizes": {name: len(dataset[name]) for name in SPLITS},
        "label_distribution": {
            name: {label_map.names[k]: int(v) for k, v in sorted(Counter(dataset[name][LABEL]).items())}
            for name in SPLITS
        },
        "token_length": {
            "p50": float(np.percentile(all_lengths, 50)),
            "p95": float(np.percentile(all_lengths, 95)),
            "max": int(all_lengths.max()),
            "truncated_fraction": float((all_lengths >= config.max_seq_length).mean()),
        },
        "config": asdict(config),
    }
    with atomic_directory(output_dir) as tmp:
        dataset.save_to_disk(str(tmp / SPLITS_DIR))
        label_map.save(tmp / LABELS_FILE)
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2), encoding="utf-8")
    log.info(
        "preprocessed %d rows -> %s (removed %d)",
        rows_read,
        stats["split_sizes"],
        sum(removed.values()),
    )
    stats["_lengths"] = lengths
    return stats


def prepare_instructions(config: PreprocessConfig, tokenizer=None):
    """causal-lm: read, recognise, clean and encode the instruction data: (rows, rows read, removed, layout).

    Like :func:`prepare_rows`, everything that can be wrong with the input shows up here."""
    from transformers import AutoTokenizer

    from kftune.components.common.chat import ensure_chat_template
    from kftune.components.preprocess import instructions
    from kftune.components.preprocess.reader import read_bundled_instructions

    config.validate()
    if config.data == INSTRUCTION_DATA:
        frame, source = read_bundled_instructions(), config.data
    elif config.data == BUNDLED_DATA:
        raise ConfigError(f"data {BUNDLED_DATA} is labelled text for task classification; task causal-lm "
                          f"takes instruction data ({INSTRUCTION_DATA} is the bundled one)")
    else:
        frame, source = read_frame(config.data, config.data_format)
    layout = instructions.detect_layout(frame, config.instruction_format, source)
    chats = instructions.conversations(frame, layout, source)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model), use_fast=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ensure_chat_template(tokenizer)
    rows, removed = instructions.clean_and_encode(chats, tokenizer, config.max_seq_length, config.overlong, source)
    if config.max_rows and config.max_rows < len(rows):
        rows = rows.sample(n=config.max_rows, random_state=config.seed).reset_index(drop=True)
    if len(rows) < 10:
        raise DataError(f"{source}: {len(rows)} examples after cleaning; a train/validation/test split needs at "
                        "least 10")
    return rows, len(frame), removed, layout, tokenizer


def preprocess_instructions(config: PreprocessConfig, output_dir: str | Path) -> dict:
    """The stage for task causal-lm: write the dataset artifact of instruction data; return its stats."""
    import datasets
    from sklearn.model_selection import train_test_split

    from kftune.components.common.chat import normalise_answer
    from kftune.components.common.schema import TASK_FILE
    from kftune.components.preprocess import instructions

    rows, rows_read, removed, layout, tokenizer = prepare_instructions(config)
    answers = instructions.answer_set(rows[instructions.REFERENCE].tolist())
    stratify = rows[instructions.REFERENCE].map(normalise_answer) if answers else None
    rest, test = train_test_split(rows, test_size=config.test_fraction, random_state=config.seed, stratify=stratify)
    val_share = config.validation_fraction / (1 - config.test_fraction)
    train, validation = train_test_split(
        rest, test_size=val_share, random_state=config.seed,
        stratify=rest[instructions.REFERENCE].map(normalise_answer) if answers else None)
    parts = {"train": train, "validation": validation, "test": test}
    dataset = datasets.DatasetDict(
        {name: datasets.Dataset.from_pandas(part.reset_index(drop=True), preserve_index=False)
         for name, part in parts.items()})
    lengths = np.asarray(rows[LENGTH])
    completion = np.asarray(rows["completion_length"])
    stats = {
        "task": "causal-lm",
        "source": config.data,
        "instruction_format": layout,
        "chat_template": "model" if tokenizer.chat_template != PLAIN_TEMPLATE else "plain",
        "rows_read": rows_read,
        "removed": {k: v for k, v in removed.items() if k in instructions.RULES},
        "prompt_truncated": removed["prompt_truncated"],
        "rows_clean": int(len(rows)),
        "rows_used": int(len(rows)),
        "augmented_rows": 0,
        "answers": answers,
        "labels": answers,  # short-answer data: the answers are the classes the report shows
        "label_distribution": {
            name: dict(sorted(Counter(normalise_answer(r) for r in dataset[name]["reference"]).items()))
            if answers else {} for name in SPLITS},
        "split_sizes": {name: len(dataset[name]) for name in SPLITS},
        "token_length": {
            "p50": float(np.percentile(lengths, 50)),
            "p95": float(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
            "completion_p95": float(np.percentile(completion, 95)),
            "completion_max": int(completion.max()),
            "truncated_fraction": removed["prompt_truncated"] / max(1, len(rows)),
        },
        "config": asdict(config),
    }
    task_info = {"task": "causal-lm", "answers": answers, "max_seq_length": config.max_seq_length,
                 "completion_max_tokens": int(completion.max()), "instruction_format": layout}
    with atomic_directory(output_dir) as tmp:
        dataset.save_to_disk(str(tmp / SPLITS_DIR))
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        (tmp / TASK_FILE).write_text(json.dumps(task_info, indent=2), encoding="utf-8")
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2), encoding="utf-8")
    log.info("preprocessed %d %s examples -> %s (removed %s)", rows_read, layout, stats["split_sizes"],
             {k: v for k, v in removed.items() if v})
    stats["_lengths"] = {name: np.asarray(dataset[name][LENGTH]) for name in SPLITS}
    return stats
