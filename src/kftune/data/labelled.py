"""Read labelled text: a file, a directory of shards, an object-store prefix, or a bundled data set.

Formats: CSV, TSV, JSON Lines, Parquet (each optionally .gz/.bz2/.xz compressed for the text formats) and a
directory written by ``datasets.save_to_disk`` (a Dataset, or a DatasetDict whose splits are concatenated:
kftune makes its own split), read by :mod:`kftune.data.files` (which predict shares). The bundled data sets
(:mod:`kftune.data.bundled`) are read from their installed packages. Every problem is raised as a
:class:`DataError` naming the file, and the row or column where there is one.
"""

from __future__ import annotations

import io

import pandas as pd

from kftune.data import bundled
from kftune.data.files import read_frame, read_text
from kftune.data.schema import LABEL, TEXT
from kftune.data.text import clean_text
from kftune.errors import DataError


def read_bundled() -> pd.DataFrame:
    """The bundled Rotten Tomatoes reviews with columns text and label."""
    path = bundled.bundled_data_file()
    frame = pd.read_csv(io.StringIO(read_text(path)), dtype=object)
    frame = frame[frame["category"].isin(bundled.DATA_LABELS)]
    return pd.DataFrame(
        {TEXT: frame["text"].to_numpy(), LABEL: frame["category"].map(bundled.DATA_LABELS)}
    )


def read_bundled_regression() -> pd.DataFrame:
    """The bundled regression data: VADER's rated tweets and Amazon review snippets, with columns text and label
    (mean sentiment intensity, -4..+4)."""
    import tarfile

    with tarfile.open(bundled.vader_sdist()) as outer:
        inner_file = outer.extractfile(bundled.VADER_INNER)
        with tarfile.open(fileobj=io.BytesIO(inner_file.read())) as inner:
            parts = []
            for name in bundled.VADER_FILES:
                text = inner.extractfile(name).read().decode("utf-8")
                rows = [line.split("\t", 2) for line in text.splitlines() if line.strip()]
                parts.append(pd.DataFrame({TEXT: [r[2] for r in rows], LABEL: [float(r[1]) for r in rows]}))
    return pd.concat(parts, ignore_index=True)


def read_bundled_multilabel() -> pd.DataFrame:
    """The bundled multi-label data: each WNUT-16 tweet (its tokens joined by spaces) with the set of entity types
    it mentions (possibly none), as a list."""
    rows = [(" ".join(tokens), sorted({tag[2:] for tag in tags if tag != "O"}))
            for tokens, tags in bundled.bundled_token_sentences()]
    return pd.DataFrame({TEXT: [r[0] for r in rows], LABEL: [r[1] for r in rows]})


INSTRUCTION_PROMPT = (
    "Is the following movie review positive or negative? Answer with one word: positive or negative.\n\n"
    "Review: {text}"
)
"""The bundled instruction data's prompt: it states the task and the allowed answers, so the base
model, asked zero-shot, knows what is wanted (a fair baseline)."""
INSTRUCTION_ROWS = 1250
"""Reviews in the bundled instruction data: sized so that a default causal-LM run finishes
within 15 minutes on 2 CPU cores."""


def read_bundled_instructions() -> pd.DataFrame:
    """The bundled reviews as prompt/completion pairs: a seeded sample of :data:`INSTRUCTION_ROWS`."""
    reviews = read_bundled().sample(frac=1.0, random_state=0).head(INSTRUCTION_ROWS)
    return pd.DataFrame({"prompt": [INSTRUCTION_PROMPT.format(text=clean_text(str(t))) for t in reviews[TEXT]],
                         "completion": reviews[LABEL].to_numpy()})


PREFERENCE_ROWS = 400
"""Pairs in the bundled preference data: the first of the instruction data's reviews (a few hundred pairs, as the
issue sizes the demonstration)."""


def read_bundled_preferences() -> pd.DataFrame:
    """The bundled preference data (task dpo), derived from the bundled instruction data: each of its first
    :data:`PREFERENCE_ROWS` prompts becomes a pair whose ``chosen`` response is the review's label and whose
    ``rejected`` response is the other allowed answer (positive <-> negative)."""
    instructions = read_bundled_instructions().head(PREFERENCE_ROWS)
    other = {"positive": "negative", "negative": "positive"}
    return pd.DataFrame({"prompt": instructions["prompt"].to_numpy(),
                         "chosen": instructions["completion"].to_numpy(),
                         "rejected": instructions["completion"].map(other).to_numpy()})


BUNDLED_TABLES = {
    bundled.BUNDLED_DATA: read_bundled,
    bundled.REGRESSION_DATA: read_bundled_regression,
    bundled.MULTILABEL_DATA: read_bundled_multilabel,
    bundled.INSTRUCTION_DATA: read_bundled_instructions,
    bundled.PREFERENCE_DATA: read_bundled_preferences,
}
"""The bundled data sets that are tables, and their readers."""


def read_labelled_data(
    data: str,
    text_column: str = TEXT,
    label_column: str = LABEL,
    data_format: str = "auto",
    more_texts: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Read ``data`` and return a frame with exactly the columns ``text`` and ``label`` (and one per field of
    ``more_texts``, ``{field: column}``, for examples of several texts).

    Args:
        data: What :func:`read_frame` reads, or a bundled data set of :data:`BUNDLED_TABLES`.
        text_column: Column holding the text.
        label_column: Column holding the label (strings or integers).
        data_format: One of ``FORMATS``; ``auto`` infers it from the path.
        more_texts: Further text fields and the columns holding them.
    """
    if data in BUNDLED_TABLES:
        return BUNDLED_TABLES[data]()
    frame, path = read_frame(data, data_format)
    return select_columns(frame, path, text_column, label_column, more_texts)


def select_columns(frame: pd.DataFrame, path: str, text_column: str = TEXT, label_column: str = LABEL,
                   more_texts: dict[str, str] | None = None) -> pd.DataFrame:
    """The text and label columns of ``frame`` (read from ``path``) as ``text`` and ``label`` (and the columns of
    ``more_texts`` under their fields' names)."""
    columns = {TEXT: text_column, **(more_texts or {}), LABEL: label_column}
    missing = [c for c in columns.values() if c not in frame.columns]
    if missing:
        available = ", ".join(map(str, frame.columns)) or "(none)"
        raise DataError(
            f"{path}: no column {missing[0]!r}; the columns are: {available} "
            "(set the text/label column parameters)"
        )
    if len(set(columns.values())) < len(columns):
        raise DataError(f"{path}: text and label column are both {text_column!r}" if text_column == label_column
                        else f"{path}: one column holds two fields: {columns}")
    return pd.DataFrame({name: frame[column].to_numpy() for name, column in columns.items()})
