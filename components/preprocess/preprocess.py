"""Clean, deduplicate, split and tokenize labelled text.

``preprocess`` is the stage: it reads the input, cleans it rule by rule (counting what each
rule removes), optionally subsamples, splits stratified and seeded into train / validation /
test, optionally augments the train split, tokenizes once with the model's fast tokenizer and
writes the dataset artifact described in :mod:`kftune.data.schema`.
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

from kftune.components.preprocess.config import PreprocessConfig
from kftune.components.preprocess.reader import read_frame, read_labelled_data, select_columns
from kftune.data.bundled import BUNDLED_DATA, INSTRUCTION_DATA, resolve_model
from kftune.data.chat import PLAIN_TEMPLATE
from kftune.data.schema import (
    LABEL,
    LABELS_FILE,
    LENGTH,
    SPLITS,
    SPLITS_DIR,
    STATS_FILE,
    TASK_FILE,
    TEXT,
    TOKENIZER_DIR,
    LabelMap,
)
from kftune.data.text import clean_text
from kftune.errors import ConfigError, DataError
from kftune.storage.atomic import atomic_directory
from kftune.tasks import (
    AUTO,
    BUNDLED_TASK_DATA,
    TASKS,
    TOKEN_FILE_SUFFIXES,
    detect_task,
    encoder_task,
    with_task,
)

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


def clean_dataset(frame: pd.DataFrame, config: PreprocessConfig, source: str = "") -> tuple[pd.DataFrame, dict]:
    """Apply the cleaning rules; return the cleaned frame and rows removed per rule. The labels are first read as
    the task takes them (``parse_labels``: class names, numbers, label sets), which names the first row it cannot
    take."""
    removed = dict.fromkeys(RULES, 0)
    frame = frame.copy()
    frame[LABEL] = encoder_task(config.task).parse_labels(frame[LABEL], source or config.data, config.label_column,
                                                          config)

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
    return LabelMap(tuple(encoder_task("classification").label_info(labels)["labels"]))


def split_dataset(frame: pd.DataFrame, config: PreprocessConfig) -> dict[str, pd.DataFrame]:
    """Seeded train / validation / test split, stratified by the task's strata (classification: the label;
    regression: quantile bins; multilabel: the label set) where they allow it, else random."""
    from sklearn.model_selection import train_test_split

    task = encoder_task(config.task)

    def split(part: pd.DataFrame, size: float):
        strata = task.strata(part[LABEL])
        if strata is not None and config.task != "classification":  # classification was checked to be splittable
            counts = strata.value_counts()
            if counts.min() < 2 or int(len(part) * size) < len(counts) or len(part) - int(len(part) * size) < len(
                    counts):
                log.info("split not stratified: %d strata are too many for %d rows", len(counts), len(part))
                strata = None
        return train_test_split(part, test_size=size, stratify=strata, random_state=config.seed)

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


def subsample(frame: pd.DataFrame, max_rows: int, seed: int, task: str = "classification") -> pd.DataFrame:
    """A stratified, seeded sample of ``max_rows`` rows (all rows if there are fewer)."""
    if not max_rows or max_rows >= len(frame):
        return frame
    from sklearn.model_selection import train_test_split

    strata = encoder_task(task).strata(frame[LABEL])
    counts = strata.value_counts() if strata is not None else pd.Series([0])
    stratify = strata if counts.min() >= 2 and max_rows >= len(counts) else None
    sample, _ = train_test_split(frame, train_size=max_rows, stratify=stratify, random_state=seed)
    return sample.reset_index(drop=True)


def read_data(config: PreprocessConfig) -> tuple[PreprocessConfig, pd.DataFrame | None, str]:
    """``config`` with its task decided where it is ``auto`` (from the data, which is read for that: returned so it
    is read once), and the reason, for the log and the data report."""
    if config.task != AUTO:
        return config, None, "set"
    if config.data in BUNDLED_TASK_DATA:
        task, reason, frame = BUNDLED_TASK_DATA[config.data], "the bundled data of that task", None
    elif token_file(config.data):  # CoNLL-style text: per-token tags, not a table read_frame reads
        task, reason, frame = token_file(config.data), f"{config.data}: a CoNLL-style file", None
    else:
        frame, source = read_frame(config.data, config.data_format)
        task, reason = detect_task(frame, config.label_column, config.label_separator, config.tokens_column,
                                   config.tags_column)
        reason = f"{source}: {reason}"
    log.info("task auto: %s (%s)", task, reason)
    return with_task(config, task), frame, f"auto: {reason}"


def token_file(data: str) -> str | None:
    """The task that reads ``data`` by its suffix alone (CoNLL-style files: token classification), or None."""
    suffixes = [s.lower() for s in Path(data.rstrip("/")).suffixes]
    suffixes = suffixes[:-1] if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz") else suffixes
    for name, spec in TASKS.items():
        if getattr(spec, "token_level", False) and suffixes and suffixes[-1] in TOKEN_FILE_SUFFIXES:
            return name
    return None


def prepare_tokens(config: PreprocessConfig):
    """Tasks with per-token tags: read, check, clean and sample the sentences: (frame, source, rows read, counts)."""
    config.validate()
    task = encoder_task(config.task)
    frame, source, rows_read, counts = task.read(config)
    if config.max_rows and config.max_rows < len(frame):
        frame = frame.sample(n=config.max_rows, random_state=config.seed).reset_index(drop=True)
    task.check_labels(frame[task.tags_column], config, source)
    return frame, source, rows_read, counts


def preprocess_tokens(config: PreprocessConfig, output_dir: str | Path, decided: str = "set") -> dict:
    """The stage for tasks with per-token tags (token classification): sentences split by the task's strata,
    encoded with labels on each word's first piece; writes the dataset artifact and returns its stats."""
    import datasets
    from transformers import AutoTokenizer

    task = encoder_task(config.task)
    frame, source, rows_read, counts = prepare_tokens(config)
    info = {"task": config.task, **task.label_info(frame[task.tags_column])}
    splits = split_dataset(frame.rename(columns={task.tags_column: LABEL}), config)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model), use_fast=True)
    if not tokenizer.is_fast:
        raise ConfigError(f"model {config.model!r} has no fast tokenizer; kftune needs one")
    dataset = {}
    for name, part in splits.items():
        tokens, tags = part[task.tokens_column].tolist(), task.encode_labels(part[LABEL], info)
        encoded = task.encode(tokenizer, tokens, tags, info, config.max_seq_length)
        encoded[LENGTH] = [len(ids) for ids in encoded["input_ids"]]
        dataset[name] = datasets.Dataset.from_dict({task.tokens_column: tokens, task.tags_column: tags, **encoded})
    dataset = datasets.DatasetDict(dataset)
    lengths = {name: np.asarray(dataset[name][LENGTH]) for name in SPLITS}
    all_lengths = np.concatenate(list(lengths.values()))
    words = sum(len(t) for t in frame[task.tokens_column])
    labelled = sum(sum(1 for x in row if x != task.ignore_label) for name in SPLITS for row in dataset[name][LABEL])
    removed = {k: counts[k] for k in task.cleaning_rules}
    stats = {
        "task": config.task,
        "task_decided": decided,
        "source": source,
        "rows_read": rows_read,
        "removed": removed,
        "converted_tags": {k: counts[k] for k in task.conversions},
        "rows_clean": rows_read - sum(removed.values()),
        "rows_used": int(len(frame)),
        "augmented_rows": 0,
        "labels": info["labels"],
        "split_sizes": {name: len(dataset[name]) for name in SPLITS},
        "label_distribution": {name: task.distribution(dataset[name][task.tags_column], info) for name in SPLITS},
        "token_length": {
            "p50": float(np.percentile(all_lengths, 50)),
            "p95": float(np.percentile(all_lengths, 95)),
            "max": int(all_lengths.max()),
            "truncated_fraction": float((all_lengths >= config.max_seq_length).mean()),
            "words_cut": words - labelled,
        },
        "config": asdict(config),
    }
    with atomic_directory(output_dir) as tmp:
        dataset.save_to_disk(str(tmp / SPLITS_DIR))
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2), encoding="utf-8")
    log.info("preprocessed %d sentences -> %s (removed %s, converted %s)", rows_read, stats["split_sizes"], removed,
             stats["converted_tags"])
    stats["_lengths"] = lengths
    return stats


def prepare_rows(config: PreprocessConfig, frame: pd.DataFrame | None = None) -> tuple[pd.DataFrame, int, dict]:
    """Read, clean and sample the input and check it can be split: (rows, rows read, removed).

    Everything that can be wrong with the input shows up here, before any tokenizer or model
    is loaded; the CLI calls it to fail fast before starting a pipeline.
    """
    if config.task == AUTO:
        config, frame, _ = read_data(config)
    config.validate()
    task = encoder_task(config.task)
    if task.token_level:
        frame, _, rows_read, counts = prepare_tokens(config)
        return frame, rows_read, {k: counts[k] for k in task.cleaning_rules}
    for data, owner in BUNDLED_TASK_DATA.items():
        if config.data == data and owner != config.task:
            raise ConfigError(f"data {data} is the bundled data of task {owner}; task {config.task} takes "
                              f"{task.defaults.get('data') or 'data of its own (set data)'}")
    if config.data == AUTO:
        raise ConfigError(f"task {config.task} has no bundled data; set data (a file, directory or URI)")
    if frame is None:
        frame = read_labelled_data(config.data, config.text_column, config.label_column, config.data_format)
    else:
        frame = select_columns(frame, config.data, config.text_column, config.label_column)
    rows_read = len(frame)
    frame, removed = clean_dataset(frame, config)
    frame = subsample(frame, config.max_rows, config.seed, config.task)
    task.check_labels(frame[LABEL], config, config.data)
    return frame, rows_read, removed


def preprocess(config: PreprocessConfig, output_dir: str | Path) -> dict:
    """Run the whole stage; write the dataset artifact to ``output_dir``; return its stats."""
    import datasets
    from transformers import AutoTokenizer

    config, frame, decided = read_data(config)
    if config.task == "causal-lm":
        return preprocess_instructions(config, output_dir, frame, decided)
    if encoder_task(config.task).token_level:
        return preprocess_tokens(config, output_dir, decided)

    source = config.data
    task = encoder_task(config.task)
    frame, rows_read, removed = prepare_rows(config, frame)

    info = {"task": config.task, **task.label_info(frame[LABEL])}
    frame[LABEL] = task.encode_labels(frame[LABEL], info)
    splits = split_dataset(frame, config)

    augmented = 0
    if config.augment_copies:
        train = splits["train"]
        noisy = augment_texts(
            train[TEXT].tolist(), config.augment_copies, config.augment_probability, config.seed
        )
        extra = pd.DataFrame({TEXT: [t for _, t in noisy], LABEL: [train[LABEL].iloc[i] for i, _ in noisy]})
        augmented = len(extra)
        splits["train"] = pd.concat([train, extra], ignore_index=True)

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model), use_fast=True)
    if not tokenizer.is_fast:
        raise ConfigError(f"model {config.model!r} has no fast tokenizer; kftune needs one")

    def encode(batch):
        encoded = tokenizer(batch[TEXT], truncation=True, max_length=config.max_seq_length)
        encoded[LENGTH] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    features = datasets.Features({TEXT: datasets.Value("string"), LABEL: task.label_feature(info)})
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
        "task": config.task,
        "task_decided": decided,
        "source": source,
        "rows_read": rows_read,
        "removed": removed,
        "rows_clean": rows_read - sum(removed.values()),
        "rows_used": int(len(frame)),
        "augmented_rows": augmented,
        "labels": info.get("labels", []),
        "split_sizes": {name: len(dataset[name]) for name in SPLITS},
        "label_distribution": {name: task.distribution(dataset[name][LABEL], info) for name in SPLITS},
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
        if config.task == "classification":
            LabelMap(tuple(info["labels"])).save(tmp / LABELS_FILE)
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
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


def prepare_instructions(config: PreprocessConfig, tokenizer=None, frame: pd.DataFrame | None = None):
    """causal-lm: read, recognise, clean and encode the instruction data: (rows, rows read, removed, layout).

    Like :func:`prepare_rows`, everything that can be wrong with the input shows up here."""
    from transformers import AutoTokenizer

    from kftune.components.preprocess import instructions
    from kftune.components.preprocess.reader import read_bundled_instructions
    from kftune.data.chat import ensure_chat_template

    config.validate()
    if config.data == INSTRUCTION_DATA:
        frame, source = read_bundled_instructions(), config.data
    elif config.data == BUNDLED_DATA:
        raise ConfigError(f"data {BUNDLED_DATA} is labelled text for task classification; task causal-lm "
                          f"takes instruction data ({INSTRUCTION_DATA} is the bundled one)")
    elif frame is not None:
        source = config.data
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


def preprocess_instructions(config: PreprocessConfig, output_dir: str | Path, frame: pd.DataFrame | None = None,
                            decided: str = "set") -> dict:
    """The stage for task causal-lm: write the dataset artifact of instruction data; return its stats."""
    import datasets
    from sklearn.model_selection import train_test_split

    from kftune.components.preprocess import instructions
    from kftune.data.chat import normalise_answer
    from kftune.data.schema import TASK_FILE

    rows, rows_read, removed, layout, tokenizer = prepare_instructions(config, frame=frame)
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
        "task_decided": decided,
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
