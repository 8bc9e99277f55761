"""Token-classification data: reading, checking, cleaning, splitting and encoding sentences of words with an
IOB2 tag each.

Plain functions, each callable from a test. Heavy imports (pandas, numpy, torch, transformers,
scikit-learn) happen inside the functions, so importing this module stays cheap.

- Reading: JSON Lines / JSON / Parquet rows with a list of tokens and a list of tags per row, or
  CoNLL-style text (one token per line, its tag in the last column, a blank line between
  sentences, ``-DOCSTART-`` lines skipped): :func:`read_token_data` (formats and compression
  told by :mod:`kftune.data.files`, which every reader shares).
- Checking and cleaning: :func:`clean_token_data` (IOB2 checked; IOB1, BIOES and BILOU
  converted; empty and duplicate sentences dropped and counted).
- Split: :func:`stratify_keys` / :func:`split_token_data` (the set of entity types of a
  sentence as the stratification key, rare keys merged).
- Encoding: :func:`tag_list`, :func:`encode` (labels on each word's first word piece, -100
  elsewhere) and :func:`collate`.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections import Counter
from pathlib import Path

from kftune.errors import DataError

NAME = "token-classification"
TOKENS = "tokens"
TAGS = "tags"
WHERE = "where"
"""Column of :func:`read_token_data`'s frame saying where a row came from, for messages
("line 12", "row 3", "sentence 5 (line 40)")."""
LINE = "line"
"""Column with the file line of a CoNLL sentence's first token (-1 for the other formats)."""
IGNORE = -100
"""Label of word pieces that are not a word's first piece, and of special tokens."""
OUTSIDE = "O"

FORMATS = ("auto", "jsonl", "json", "parquet", "conll")
_SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".conll": "conll",
    ".iob": "conll",
    ".bio": "conll",
    ".txt": "conll",
}
_TAG = re.compile(r"^([BIESLU])-(.+)$")
# BIOES (S single, E end) and BILOU (U unit, L last) prefixes, as IOB2 prefixes
_TO_IOB2 = {"B": "B", "I": "I", "S": "B", "U": "B", "E": "I", "L": "I"}
DOCSTART = "-DOCSTART-"
CLEANING_RULES = ("empty", "exact_duplicate")
CONVERSIONS = ("iob1_to_iob2", "bioes_to_iob2")


# ---------------------------------------------------------------------------------------------
# Reading


def detect_format(path: Path) -> str:
    """The format of ``path`` from its suffixes (a trailing .gz/.bz2/.xz is looked through)."""
    from kftune.data.files import format_from_suffix

    fmt = format_from_suffix(path, _SUFFIX_FORMATS)
    if fmt:
        return fmt
    raise DataError(
        f"{path}: unknown token-classification data format {''.join(path.suffixes) or '(no suffix)'!r}; "
        "expected .jsonl, .json, .parquet (rows with tokens and tags lists) or .conll/.iob/.bio/.txt "
        "(CoNLL: one token and its tag per line); or pass the format explicitly"
    )


def _read_text(path: Path) -> str:
    from kftune.data.files import read_text

    return read_text(path)


def as_list(value):
    """A list for list-like cells (Parquet gives numpy arrays); anything else unchanged."""
    import numpy as np

    if isinstance(value, np.ndarray | tuple):
        return list(value)
    return value


def _check_columns(columns, path: Path, tokens_column: str, tags_column: str) -> None:
    for column in (tokens_column, tags_column):
        if column not in columns:
            available = ", ".join(sorted(map(str, columns))) or "(none)"
            raise DataError(f"{path}: no column {column!r}; the columns are: {available} "
                            "(set tokens_column / tags_column)")


def _rows_frame(rows: list[dict], wheres: list[str], path: Path, tokens_column: str, tags_column: str):
    import pandas as pd

    if not rows:
        raise DataError(f"{path}: no rows; expected one object per sentence with {tokens_column!r} and "
                        f"{tags_column!r} lists")
    _check_columns(set().union(*(r.keys() for r in rows)), path, tokens_column, tags_column)
    return pd.DataFrame({
        TOKENS: [as_list(r.get(tokens_column)) for r in rows],
        TAGS: [as_list(r.get(tags_column)) for r in rows],
        WHERE: wheres,
        LINE: [-1] * len(rows),
    })


def _read_jsonl(path: Path, tokens_column: str, tags_column: str):
    from kftune.data.files import jsonl_records

    records = jsonl_records(path)
    return _rows_frame([row for _, row in records], [f"line {number}" for number, _ in records], path,
                       tokens_column, tags_column)


def _read_json(path: Path, tokens_column: str, tags_column: str):
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON array of objects (one per sentence)")
    return _rows_frame(data, [f"record {i}" for i in range(1, len(data) + 1)], path, tokens_column, tags_column)


def _read_parquet(path: Path, tokens_column: str, tags_column: str):
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file: {e}") from e
    _check_columns(set(frame.columns), path, tokens_column, tags_column)
    rows = frame[[tokens_column, tags_column]].to_dict("records")
    return _rows_frame(rows, [f"row {i}" for i in range(1, len(rows) + 1)], path, tokens_column, tags_column)


def _read_conll(path: Path):
    """One token per line (first column), its tag in the last column; blank lines end sentences."""
    import pandas as pd

    tokens_col, tags_col, wheres, lines = [], [], [], []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0

    def end_sentence() -> None:
        nonlocal tokens, tags
        if tokens:
            tokens_col.append(tokens)
            tags_col.append(tags)
            wheres.append(f"sentence {len(tokens_col)} (line {first})")
            lines.append(first)
        tokens, tags = [], []

    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            end_sentence()
            continue
        if fields[0] == DOCSTART:
            end_sentence()
            continue
        if len(fields) < 2:
            raise DataError(f"{path}: line {number}: expected a token and its tag separated by whitespace "
                            f"(the tag in the last column), got {line.strip()!r}")
        if not tokens:
            first = number
        tokens.append(fields[0])
        tags.append(fields[-1])
    end_sentence()
    return pd.DataFrame({TOKENS: tokens_col, TAGS: tags_col, WHERE: wheres, LINE: lines})


def _read_file(path: Path, fmt: str, tokens_column: str, tags_column: str):
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "conll":
        return _read_conll(path)
    reader = {"jsonl": _read_jsonl, "json": _read_json, "parquet": _read_parquet}[fmt]
    return reader(path, tokens_column, tags_column)


def _read_local(path: Path, fmt: str, tokens_column: str, tags_column: str):
    import pandas as pd

    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{path}: the directory holds no files; expected data files in one format")
        frames = []
        for p in files:  # a directory of shards: each named in messages by its own path
            frame = _read_file(p, fmt, tokens_column, tags_column)
            frame[WHERE] = [f"{p.name}: {w}" for w in frame[WHERE]]
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)
    return _read_file(path, fmt, tokens_column, tags_column)


def read_token_data(data: str, fmt: str = "auto", tokens_column: str = TOKENS, tags_column: str = TAGS):
    """Read sentences as they are: (frame, source).

    The frame has the columns ``tokens`` and ``tags`` (the cells as read: lists, for valid data;
    :func:`clean_token_data` checks them), ``where`` (the row's place for messages: "line 12" for
    JSON Lines, "record 3" for JSON, "row 3" for Parquet, "sentence 5 (line 40)" for CoNLL) and
    ``line`` (the file line of a CoNLL sentence's first token, else -1). ``source`` is the path or
    URI read, for messages.

    ``data`` is a local file, a local directory of files in one format (read in name order), or
    an ``s3://`` / ``gs://`` object or prefix (fetched with the shared storage code); ``fmt`` one
    of :data:`FORMATS` (``auto``: from the suffix; .txt is read as CoNLL).
    ``tokens_column`` / ``tags_column`` name the list columns of JSON Lines, JSON and Parquet.
    """
    from kftune.storage import fetch, is_remote

    if fmt not in FORMATS:
        raise DataError(f"unknown token-classification data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if is_remote(data):
        with tempfile.TemporaryDirectory(prefix="kftune-ingest-") as tmp:
            paths = fetch(data, Path(tmp) / "data")
            local = paths[0] if len(paths) == 1 and not data.endswith("/") else Path(tmp) / "data"
            try:
                frame = _read_local(local, fmt, tokens_column, tags_column)
            except DataError as e:  # name the object, not the temporary copy
                raise DataError(str(e).replace(str(local), data.rstrip("/"))) from None
            return frame, data.rstrip("/")
    path = Path(data)
    return _read_local(path, fmt, tokens_column, tags_column), str(path)


# ---------------------------------------------------------------------------------------------
# Tags and cleaning


def entity_type(tag: str) -> str:
    """``PER`` for ``B-PER``/``I-PER``; ``O`` for ``O``."""
    return OUTSIDE if tag == OUTSIDE else tag[2:]


def repair_iob2(tags: list[str]) -> tuple[list[str], int]:
    """``tags`` with every ``I-X`` that does not continue an ``X`` entity made ``B-X`` (how IOB1
    marks entity starts, and how a model's stray ``I-`` is read); and how many were changed."""
    fixed, changed, previous = [], 0, OUTSIDE
    for tag in tags:
        if tag.startswith("I-") and entity_type(previous) != tag[2:]:
            tag = "B-" + tag[2:]
            changed += 1
        fixed.append(tag)
        previous = tag
    return fixed, changed


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _check_list(value, what: str, source: str, where: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, list):
        shown = "a string" if isinstance(value, str) else type(value).__name__
        raise DataError(f"{source}: {where}: {what} must be a list of strings, got {shown}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(f"{source}: {where}: {what}[{i}] must be a string, got {type(item).__name__} {item!r}")
    return value


def _token_place(where: str, line: int, index: int) -> str:
    """"sentence 5 (line 40), token 2 (line 42)" for CoNLL, "line 12, token 2" otherwise."""
    return f"{where}, token {index} (line {line + index})" if line >= 0 else f"{where}, token {index}"


def clean_token_data(frame, source: str, strict_iob2: bool = False):
    """Check and normalise sentences; return (frame with ``tokens`` and ``tags``, counts).

    Raises :class:`DataError`, naming ``source``, the row and what was expected, for: a cell
    that is not a list of strings; a sentence whose token and tag counts differ; an empty or
    whitespace token; a tag that is not ``O`` or ``PREFIX-TYPE``. Converted, and counted per
    tag: BIOES/BILOU prefixes (``S-``/``U-`` -> ``B-``, ``E-``/``L-`` -> ``I-``) and IOB1 entity
    starts (an ``I-X`` that does not continue an ``X`` entity -> ``B-X``); with ``strict_iob2``
    either is an error instead. Dropped, and counted per sentence: empty sentences (no tokens,
    or both cells missing) and exact duplicates (same tokens and tags) after the first.

    ``counts``: ``{"empty": n, "exact_duplicate": n, "iob1_to_iob2": n, "bioes_to_iob2": n}``
    (the first two sentences removed, the last two tags converted).
    """
    import pandas as pd

    counts = dict.fromkeys(CLEANING_RULES + CONVERSIONS, 0)
    wheres = frame[WHERE] if WHERE in frame else [f"row {i}" for i in range(1, len(frame) + 1)]
    lines = frame[LINE] if LINE in frame else [-1] * len(frame)
    kept_tokens, kept_tags, seen = [], [], set()
    for tokens, tags, where, line in zip(frame[TOKENS], frame[TAGS], wheres, lines, strict=True):
        tokens, tags = as_list(tokens), as_list(tags)
        if (_is_missing(tokens) or tokens == []) and (_is_missing(tags) or tags == []):
            counts["empty"] += 1
            continue
        tokens = _check_list(tokens, "tokens", source, where)
        tags = _check_list(tags, "tags", source, where)
        if len(tokens) != len(tags):
            raise DataError(f"{source}: {where}: {len(tokens)} tokens but {len(tags)} tags; "
                            "expected one tag per token")
        for i, token in enumerate(tokens):
            if not token.strip():
                raise DataError(f"{source}: {_token_place(where, line, i)}: empty token {token!r}; "
                                "expected a non-blank word")
        converted = []
        for i, (token, tag) in enumerate(zip(tokens, tags, strict=True)):
            tag = tag.strip()
            if tag == OUTSIDE:
                converted.append(tag)
                continue
            match = _TAG.match(tag)
            if not match:
                raise DataError(f"{source}: {_token_place(where, line, i)} ({token!r}): tag {tag!r} is not "
                                "IOB2; expected O, B-TYPE or I-TYPE (IOB1, BIOES and BILOU are converted)")
            prefix, kind = match.groups()
            if prefix not in "BI":
                if strict_iob2:
                    raise DataError(f"{source}: {_token_place(where, line, i)} ({token!r}): tag {tag!r} is "
                                    "BIOES/BILOU; expected IOB2 (O, B-TYPE, I-TYPE) with strict IOB2 checking")
                counts["bioes_to_iob2"] += 1
            converted.append(f"{_TO_IOB2[prefix]}-{kind}")
        fixed, changed = repair_iob2(converted)
        if changed and strict_iob2:
            i = next(i for i, (a, b) in enumerate(zip(converted, fixed, strict=True)) if a != b)
            raise DataError(f"{source}: {_token_place(where, line, i)} ({tokens[i]!r}): tag {converted[i]!r} "
                            "starts an entity; expected B- at an entity's start (IOB2) with strict IOB2 checking")
        counts["iob1_to_iob2"] += changed
        key = (tuple(tokens), tuple(fixed))
        if key in seen:
            counts["exact_duplicate"] += 1
            continue
        seen.add(key)
        kept_tokens.append(list(tokens))
        kept_tags.append(fixed)
    return pd.DataFrame({TOKENS: kept_tokens, TAGS: kept_tags}), counts


def tag_list(tag_seqs) -> list[str]:
    """The tags in id order: ``O``, then ``B-T``, ``I-T`` for each entity type ``T`` in sorted order."""
    types = sorted({entity_type(t) for tags in tag_seqs for t in tags} - {OUTSIDE})
    return [OUTSIDE] + [f"{p}-{t}" for t in types for p in "BI"]


# ---------------------------------------------------------------------------------------------
# Split


RARE = "(rare)"


def stratify_keys(tag_seqs, min_count: int = 3) -> list[str]:
    """A stratification key per sentence: its sorted entity types joined by ``+`` (``O`` for
    none). Keys held by fewer than ``min_count`` sentences are merged into ``(rare)``; if that
    is still too rare, into the most common key."""
    keys = ["+".join(sorted({entity_type(t) for t in tags} - {OUTSIDE})) or OUTSIDE for tags in tag_seqs]
    counts = Counter(keys)
    keys = [k if counts[k] >= min_count else RARE for k in keys]
    counts = Counter(keys)
    if 0 < counts[RARE] < min_count:
        common = max((k for k in counts if k != RARE), key=lambda k: (counts[k], k), default=RARE)
        keys = [common if k == RARE else k for k in keys]
    return keys


def _stratify(keys: list[str], fraction: float):
    """``keys`` for train_test_split's stratify, or None where it cannot stratify (one key, or
    more keys than the smaller side has rows)."""
    n, k = len(keys), len(set(keys))
    smaller = min(math.ceil(n * fraction), n - math.ceil(n * fraction))
    return keys if 1 < k <= smaller else None


def split_token_data(frame, validation_fraction: float, test_fraction: float, seed: int, source: str = "data") -> dict:
    """Seeded train / validation / test split, stratified by :func:`stratify_keys` where the
    smaller side of each cut has room for every key (else unstratified)."""
    from sklearn.model_selection import train_test_split

    if len(frame) < 3:
        raise DataError(f"{source}: {len(frame)} sentence(s) after cleaning; a train/validation/test split "
                        "needs at least 3")
    keys = stratify_keys(frame[TAGS])
    rest, test = train_test_split(frame, test_size=test_fraction, random_state=seed,
                                  stratify=_stratify(keys, test_fraction))
    share = validation_fraction / (1 - test_fraction)
    rest_keys = stratify_keys(rest[TAGS])
    train, validation = train_test_split(rest, test_size=share, random_state=seed,
                                         stratify=_stratify(rest_keys, share))
    return {name: part.reset_index(drop=True) for name, part in
            (("train", train), ("validation", validation), ("test", test))}


# ---------------------------------------------------------------------------------------------
# Encoding and batching


def encode(tokenizer, tokens_batch, tags_batch, tag2id: dict[str, int] | None, max_length: int) -> dict:
    """Tokenize pre-split sentences (a fast tokenizer, ``is_split_into_words=True``, truncated to
    ``max_length``): ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the tokenizer
    gives them), ``word_ids`` (the word index of each piece,
    -1 for special tokens) and, with ``tags_batch``, ``labels``: each word's tag id on its first
    word piece, -100 on its other pieces and on special tokens. Words cut off by truncation
    have no label (and no prediction). ``tags_batch=None`` (prediction) leaves out ``labels``."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"token classification needs a fast tokenizer (word ids), got {type(tokenizer).__name__}")
    encoded = tokenizer([list(t) for t in tokens_batch], is_split_into_words=True, truncation=True,
                        max_length=max_length)
    out = {name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoded}
    out["word_ids"] = []
    if tags_batch is not None:
        out["labels"] = []
    for i in range(len(encoded["input_ids"])):
        word_ids = encoded.word_ids(i)
        out["word_ids"].append([-1 if w is None else w for w in word_ids])
        if tags_batch is None:
            continue
        tags = tags_batch[i]
        labels, previous = [], None
        for w in word_ids:
            if w is None or w == previous:
                labels.append(IGNORE)
            else:
                if tags[w] not in tag2id:
                    raise DataError(f"tag {tags[w]!r} is not in the label list ({', '.join(tag2id)})")
                labels.append(tag2id[tags[w]])
            previous = w
        out["labels"].append(labels)
    return out


def collate(examples: list[dict], pad_token_id: int = 0) -> dict:
    """Pad a batch of :func:`encode` examples to its longest: ``input_ids`` with
    ``pad_token_id``, ``attention_mask`` with 0, ``labels`` (when present) with -100. Returns
    torch long tensors; other keys (``word_ids``) are left out."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    pads = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE, "token_type_ids": 0}
    batch = {}
    for name, pad in pads.items():
        if name in examples[0]:
            batch[name] = torch.tensor([list(e[name]) + [pad] * (width - len(e[name])) for e in examples],
                                       dtype=torch.long)
    return batch
