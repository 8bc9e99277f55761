"""Cleaning labelled text rows, rule by rule, counting what each rule removes.

The rules apply in the order of :data:`RULES` (the data report lists them in that order). An
example may have several texts (a sentence pair): a rule on texts drops the row when any of
them breaks it, and duplicates are judged on all of them together.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pandas as pd

from kftune.data.schema import LABEL, TEXT
from kftune.data.text import clean_text

_SPACE = re.compile(r"\s+")
_NOT_WORD = re.compile(r"[^\w\s]")
_JOIN = "\x1f"  # between the texts of one example in its duplicate keys

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


def clean_rows(frame: pd.DataFrame, parse_labels: Callable[[pd.Series], pd.Series], min_chars: int, max_chars: int,
               fields: tuple[str, ...] = (TEXT,)) -> tuple[pd.DataFrame, dict[str, int]]:
    """Apply the cleaning rules to a frame of ``fields`` and ``label``; return the cleaned frame and the rows
    removed per rule. ``parse_labels`` first reads the labels as the task takes them (class names, numbers,
    label sets), raising :class:`~kftune.errors.DataError` for the first row it cannot take."""
    removed = dict.fromkeys(RULES, 0)
    frame = frame.copy()
    frame[LABEL] = parse_labels(frame[LABEL])

    def drop(mask: pd.Series, rule: str) -> None:
        nonlocal frame
        removed[rule] += int(mask.sum())
        frame = frame[~mask]

    def any_text(test: Callable[[pd.Series], pd.Series]) -> pd.Series:
        masks = [test(frame[name]) for name in fields]
        for mask in masks[1:]:
            masks[0] = masks[0] | mask
        return masks[0]

    drop(any_text(lambda texts: texts.isna() | texts.map(lambda t: not isinstance(t, str))), "missing_text")
    drop(frame[LABEL].isna(), "missing_label")
    raw = frame[list(fields)].agg(_JOIN.join, axis=1) if len(fields) > 1 else frame[TEXT]
    frame = frame.assign(**{name: frame[name].map(clean_text) for name in fields})
    frame["_raw"] = raw
    drop(any_text(lambda texts: texts.str.len() == 0), "empty_after_cleaning")
    drop(any_text(lambda texts: texts.str.len() < min_chars), "too_short")
    drop(any_text(lambda texts: texts.str.len() > max_chars), "too_long")

    frame["_key"] = (frame[list(fields)].agg(lambda row: _JOIN.join(map(normalised_key, row)), axis=1)
                     if len(fields) > 1 else frame[TEXT].map(normalised_key))
    labels_per_key = frame.groupby("_key")[LABEL].nunique()
    conflicting = frame["_key"].isin(labels_per_key.index[labels_per_key > 1])
    drop(conflicting, "conflicting_labels")
    drop(frame.duplicated("_raw"), "exact_duplicate")
    drop(frame.duplicated("_key"), "normalised_duplicate")
    return frame[[*fields, LABEL]].reset_index(drop=True), removed


def stratified_sample(frame: pd.DataFrame, max_rows: int, seed: int, strata: pd.Series | None) -> pd.DataFrame:
    """A seeded sample of ``max_rows`` rows (all rows if there are fewer), stratified by ``strata`` where every
    stratum has two rows and there are at least as many rows as strata."""
    if not max_rows or max_rows >= len(frame):
        return frame
    from sklearn.model_selection import train_test_split

    counts = strata.value_counts() if strata is not None else pd.Series([0])
    stratify = strata if counts.min() >= 2 and max_rows >= len(counts) else None
    sample, _ = train_test_split(frame, train_size=max_rows, stratify=stratify, random_state=seed)
    return sample.reset_index(drop=True)
