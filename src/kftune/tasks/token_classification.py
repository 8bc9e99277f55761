"""Token classification (named-entity recognition): one IOB2 tag per word.

Plain functions, each callable from a test; the task registry's hooks call them. Heavy imports
(pandas, numpy, torch, transformers, seqeval, scikit-learn) happen inside the functions, so
importing this module stays cheap.

- Data: JSON Lines / JSON / Parquet rows with a list of tokens and a list of tags per row, or
  CoNLL-style text (one token per line, its tag in the last column, a blank line between
  sentences, ``-DOCSTART-`` lines skipped). :func:`read_token_data`, then
  :func:`clean_token_data` (IOB2 checked; IOB1, BIOES and BILOU converted; empty and duplicate
  sentences dropped and counted).
- Split: :func:`stratify_keys` / :func:`split_token_data` (the set of entity types of a
  sentence as the stratification key, rare keys merged).
- Training: :func:`tag_list`, :func:`encode` (labels on each word's first word piece, -100
  elsewhere) and :func:`collate`; the loss is the token classification head's cross-entropy,
  which ignores -100.
- Evaluation: :func:`scores` (seqeval, strict IOB2: entity-level precision/recall/F1 overall
  and per type; token accuracy; a token-level confusion matrix of entity types) and
  :func:`most_frequent_tag_baseline`.
- Serving: :func:`text_words`, :func:`word_predictions`, :func:`entity_spans` and
  :func:`predict_entities` (entity spans with character offsets into the original text, in the
  shape of transformers' token-classification pipeline with aggregation: ``entity_group``,
  ``score``, ``word``, ``start``, ``end``).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import re
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from kftune.errors import DataError
from kftune.tasks.base import EncoderTask

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
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
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
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _OPENERS:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffixes[-1]]
    raise DataError(
        f"{path}: unknown token-classification data format {''.join(path.suffixes) or '(no suffix)'!r}; "
        "expected .jsonl, .json, .parquet (rows with tokens and tags lists) or .conll/.iob/.bio/.txt "
        "(CoNLL: one token and its tag per line); or pass the format explicitly"
    )


def _read_text(path: Path) -> str:
    from kftune.data.files import read_text

    return read_text(path)


def _as_list(value):
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
        TOKENS: [_as_list(r.get(tokens_column)) for r in rows],
        TAGS: [_as_list(r.get(tags_column)) for r in rows],
        WHERE: wheres,
        LINE: [-1] * len(rows),
    })


def _read_jsonl(path: Path, tokens_column: str, tags_column: str):
    rows, wheres = [], []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {number}: invalid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
        wheres.append(f"line {number}")
    return _rows_frame(rows, wheres, path, tokens_column, tags_column)


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
        tokens, tags = _as_list(tokens), _as_list(tags)
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


# ---------------------------------------------------------------------------------------------
# Evaluation


def scores(true_tag_seqs, pred_tag_seqs) -> dict:
    """Entity-level precision, recall and F1 (micro over entities; seqeval, strict IOB2: an
    entity counts only with the right type and exact boundaries) overall and per entity type,
    token accuracy, and a token-level confusion matrix of entity types (``O`` first, then the
    types in sorted order; rows true, columns predicted).

    Returns ``{"precision", "recall", "f1", "accuracy", "per_class": {type: {"precision",
    "recall", "f1", "support"}}, "confusion_labels": [...], "confusion_matrix": [[...]]}``.
    """
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2
    from sklearn.metrics import confusion_matrix

    true = [list(t) for t in true_tag_seqs]
    pred = [list(p) for p in pred_tag_seqs]
    for i, (t, p) in enumerate(zip(true, pred, strict=True)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: {len(t)} true tags but {len(p)} predicted")
    strict = dict(mode="strict", scheme=IOB2, zero_division=0)
    report = classification_report(true, pred, output_dict=True, **strict)
    types = sorted({entity_type(t) for seq in true + pred for t in seq} - {OUTSIDE})
    per_class = {}
    for kind in types:
        row = report.get(kind, {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
        per_class[kind] = {"precision": float(row["precision"]), "recall": float(row["recall"]),
                           "f1": float(row["f1-score"]), "support": int(row["support"])}
    labels = [OUTSIDE] + types
    flat_true = [entity_type(t) for seq in true for t in seq]
    flat_pred = [entity_type(t) for seq in pred for t in seq]
    return {
        "precision": float(precision_score(true, pred, **strict)),
        "recall": float(recall_score(true, pred, **strict)),
        "f1": float(f1_score(true, pred, **strict)),
        "accuracy": float(accuracy_score(true, pred)),
        "per_class": per_class,
        "confusion_labels": labels,
        "confusion_matrix": confusion_matrix(flat_true, flat_pred, labels=labels).tolist(),
    }


def tags_from_labels(logits, labels, id2tag) -> tuple[list[list[str]], list[list[str]]]:
    """(true, predicted) tag sequences from a batch of piece logits ``[batch, pieces, num_tags]``
    and its :func:`encode` labels (the first pieces of words carry a label, the rest -100): for
    the training loop's validation, which has labels but no word ids. Predictions are made
    valid IOB2 with :func:`repair_iob2`, as at evaluation."""
    import numpy as np

    logits, labels = np.asarray(logits), np.asarray(labels)
    predicted_ids = logits.argmax(-1)
    true, pred = [], []
    for row_labels, row_pred in zip(labels, predicted_ids, strict=True):
        keep = row_labels != IGNORE
        true.append([id2tag[int(i)] for i in row_labels[keep]])
        pred.append(repair_iob2([id2tag[int(i)] for i in row_pred[keep]])[0])
    return true, pred


def most_frequent_tag_baseline(train_tokens, train_tags, test_tokens) -> list[list[str]]:
    """Tag each test word with the tag it has most often in train (exact word form; ties go to
    the alphabetically first tag); words not seen in train get ``O``. The sequences are then
    made valid IOB2 with :func:`repair_iob2` (a word mostly tagged ``I-X`` that does not follow
    an ``X`` entity starts one: ``B-X``), as model predictions are, so both are scored alike."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for tokens, tags in zip(train_tokens, train_tags, strict=True):
        for token, tag in zip(tokens, tags, strict=True):
            counts[token][tag] += 1
    best = {token: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for token, c in counts.items()}
    return [repair_iob2([best.get(token, OUTSIDE) for token in tokens])[0] for tokens in test_tokens]


# ---------------------------------------------------------------------------------------------
# Decoding (predict, serve)


def word_predictions(logits, word_ids, id2tag, num_words: int | None = None) -> tuple[list[str], list[float]]:
    """Per word: the tag predicted on its first word piece and its softmax probability.

    ``logits``: ``[pieces, num_tags]`` for one example; ``word_ids``: the word of each piece
    (None or -1 for special tokens); ``id2tag``: tag per id (list or dict). Words past the last
    piece (cut by truncation) up to ``num_words`` get ``O`` with score 0.0. The tags are as
    predicted (possibly a stray ``I-``); :func:`repair_iob2` makes them valid IOB2."""
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    first: dict[int, int] = {}
    for piece, w in enumerate(word_ids):
        if w is not None and w >= 0 and w not in first:
            first[int(w)] = piece
    n = max(first, default=-1) + 1 if num_words is None else num_words
    tags, word_scores = [], []
    for w in range(n):
        if w not in first:
            tags.append(OUTSIDE)
            word_scores.append(0.0)
            continue
        best = int(probs[first[w]].argmax())
        tags.append(id2tag[best])
        word_scores.append(float(probs[first[w], best]))
    return tags, word_scores


def text_words(tokenizer, text: str) -> list[tuple[str, int, int]]:
    """Split raw text into words as the tokenizer's pre-tokenizer does (whitespace and, for
    BERT-like tokenizers, punctuation): ``(word, start, end)`` with character offsets into
    ``text``. Tokenizers without one fall back to runs of word characters and single symbols."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = backend.pre_tokenizer if backend is not None else None
    if pre is None:
        return [(m.group(), m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", text)]
    words = []
    for _, (start, end) in pre.pre_tokenize_str(text):
        piece = text[start:end]
        stripped = piece.strip()  # byte-level BPE keeps the leading space in the word
        if not stripped:
            continue
        start += len(piece) - len(piece.lstrip())
        words.append((stripped, start, start + len(stripped)))
    return words


def entity_spans(text: str, word_spans, tags, word_scores) -> list[dict]:
    """Group per-word IOB2 tags into entities with character offsets into ``text``.

    ``word_spans``: ``(start, end)`` (or ``(word, start, end)``) per word; ``tags`` and
    ``word_scores`` per word. An entity starts at ``B-X``, or at an ``I-X`` that does not
    continue an ``X`` entity, and runs over the following ``I-X``. Returns, in text order,
    ``{"entity_group": X, "score": mean of its words' scores, "word": text[start:end],
    "start", "end"}`` (the shape of transformers' token-classification pipeline with
    aggregation)."""
    spans = [s[-2:] for s in word_spans]
    entities: list[dict] = []
    current: dict | None = None
    for (start, end), tag, score in zip(spans, tags, word_scores, strict=True):
        kind = entity_type(tag)
        if tag.startswith("I-") and current is not None and current["entity_group"] == kind:
            current["end"] = end
            current["_scores"].append(score)
            continue
        current = None
        if kind != OUTSIDE:
            current = {"entity_group": kind, "start": start, "end": end, "_scores": [score]}
            entities.append(current)
    return [{"entity_group": e["entity_group"], "score": float(sum(e["_scores"]) / len(e["_scores"])),
             "word": text[e["start"]:e["end"]], "start": int(e["start"]), "end": int(e["end"])}
            for e in entities]


ONNX_LOGITS_AXES = {0: "batch", 1: "sequence"}
"""Dynamic axes of the exported graph's ``logits`` output: one row of tag scores per word piece."""


class _Encoded:
    """:func:`encode` output shaped like a ``datasets`` split (for ``inference.padded_batches``)."""

    def __init__(self, encoded: dict):
        from kftune.inference.runners import MODEL_INPUTS

        self._columns = {name: encoded[name] for name in MODEL_INPUTS if name in encoded}
        self.column_names = list(self._columns)

    def __getitem__(self, name: str):
        return self._columns[name]

    def __len__(self) -> int:
        return len(self._columns["input_ids"])


def piece_logits(run_batch, encoded: dict, batch_size: int = 32, pad_id: int = 0) -> list:
    """Per example, the logits of its word pieces (``[pieces, num_tags]``, padding cut off), in
    ``encoded``'s order. ``run_batch``: {input: int64 array [batch, width]} -> logits
    ``[batch, width, num_tags]`` (:func:`~kftune.inference.runners.torch_runner` or
    :func:`~kftune.inference.runners.onnx_runner`); batches are run in length order."""
    import numpy as np

    from kftune.inference.runners import padded_batches

    split = _Encoded(encoded)
    out: list = [None] * len(split)
    for indices, arrays in padded_batches(split, batch_size, pad_id):
        logits = np.asarray(run_batch(arrays), dtype=np.float32)
        for row, i in enumerate(indices):
            out[i] = logits[row, : len(split["input_ids"][i])]
    return out


def predict_word_tags(run_batch, encoded: dict, num_words: list[int], id2tag, batch_size: int = 32,
                      pad_id: int = 0) -> tuple[list[list[str]], list[list[float]]]:
    """Tags (made valid IOB2 by :func:`repair_iob2`) and scores per word of each encoded sentence."""
    tags, word_scores = [], []
    for logits, word_ids, n in zip(piece_logits(run_batch, encoded, batch_size, pad_id), encoded["word_ids"],
                                   num_words, strict=True):
        t, s = word_predictions(logits, word_ids, id2tag, num_words=n)
        tags.append(repair_iob2(t)[0])
        word_scores.append(s)
    return tags, word_scores


def logits_parity(reference: list, other: list, word_ids: list) -> dict:
    """How far two runs' :func:`piece_logits` are apart: the largest absolute difference over
    all pieces, and the number of words whose first-piece tag differs (the export's parity check)."""
    import numpy as np

    max_diff, mismatched, words = 0.0, 0, 0
    for a, b, ids in zip(reference, other, word_ids, strict=True):
        max_diff = max(max_diff, float(np.abs(np.asarray(a) - np.asarray(b)).max(initial=0.0)))
        first = [p for p, w in enumerate(ids) if w is not None and w >= 0 and (p == 0 or ids[p - 1] != w)]
        words += len(first)
        mismatched += int((np.asarray(a)[first].argmax(-1) != np.asarray(b)[first].argmax(-1)).sum()) if first else 0
    return {"max_abs_diff": max_diff, "mismatched_words": mismatched, "words": words}


def predict_entities(run_batch, tokenizer, texts: list[str], id2tag, max_length: int, batch_size: int = 32) -> list:
    """Entity spans (:func:`entity_spans`) for each raw text: words from :func:`text_words`,
    encoded as at training, run through ``run_batch`` (as for :func:`piece_logits`: a PyTorch
    model or an ONNX Runtime session behind it). An empty text has no entities."""
    words = [text_words(tokenizer, t) for t in texts]
    present = [i for i, ws in enumerate(words) if ws]
    results: list[list[dict]] = [[] for _ in texts]
    if not present:
        return results
    encoded = encode(tokenizer, [[w for w, _, _ in words[i]] for i in present], None, None, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tags, word_scores = predict_word_tags(run_batch, encoded, [len(words[i]) for i in present], id2tag,
                                          batch_size, pad_id)
    for i, t, s in zip(present, tags, word_scores, strict=True):
        results[i] = entity_spans(texts[i], words[i], t, s)
    return results


# ---------------------------------------------------------------------------------------------
# The task: the hooks the stages call


def _padded(rows, fill: int):
    """Ragged integer rows as one int64 array ``[n, longest]``, padded with ``fill``."""
    import numpy as np

    rows = [list(r) for r in rows]
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


class TokenClassification(EncoderTask):
    """Token classification (see the module docstring). The dataset artifact holds per sentence:
    ``tokens`` (the words), ``tags`` (their tag ids), the model inputs, ``word_ids`` and ``label``
    (the tag id on each word's first piece, -100 elsewhere); logits are ``[sentences, pieces,
    tags]`` (padded), labels ``[sentences, pieces]`` (padded with -100)."""

    auto_model = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    token_level = True
    """Per-piece logits and labels: the stages pad them along the sequence axis and keep the
    sequence axis dynamic in the exported graph (:data:`ONNX_LOGITS_AXES`)."""
    logits_axes = ONNX_LOGITS_AXES
    tokens_column, tags_column, ignore_label = TOKENS, TAGS, IGNORE
    cleaning_rules, conversions = CLEANING_RULES, CONVERSIONS

    # --- preprocess -------------------------------------------------------------------
    def read(self, config) -> tuple:
        """(frame with tokens and tags, source, rows read, counts per cleaning rule) of ``config.data`` (or of
        the bundled WNUT-16 tweets)."""
        import pandas as pd

        from kftune.data import bundled

        if config.data == bundled.TOKEN_DATA:
            sentences = bundled.bundled_token_sentences()
            frame, source = pd.DataFrame({TOKENS: [s[0] for s in sentences], TAGS: [s[1] for s in sentences],
                                          WHERE: [f"sentence {i}" for i in range(1, len(sentences) + 1)]}), config.data
        else:
            frame, source = read_token_data(config.data, config.token_format, config.tokens_column, config.tags_column)
        cleaned, counts = clean_token_data(frame, source, config.strict_iob2)
        return cleaned, source, len(frame), counts

    def parse_labels(self, labels, source, column, config):
        return labels.map(_as_list)

    def label_info(self, labels) -> dict:
        return {"labels": tag_list(labels)}

    def encode_labels(self, labels, info):
        tag2id = {t: i for i, t in enumerate(info["labels"])}
        return [[tag2id[t] for t in tags] for tags in labels]

    def label_feature(self, info):
        import datasets

        return datasets.Sequence(datasets.Value("int64"))

    def strata(self, labels):
        import pandas as pd

        return pd.Series(stratify_keys(list(labels)), index=labels.index)

    def check_labels(self, labels, config, source) -> None:
        super().check_labels(labels, config, source)
        if not any(t != OUTSIDE for tags in labels for t in tags):
            raise DataError(f"{source}: no entity tags after cleaning (every tag is O); token classification needs "
                            "B-TYPE/I-TYPE tags")

    def distribution(self, stored, info) -> dict:
        """Words per tag (word-level tag ids), in tag order: ``B-X`` counts the ``X`` entities."""
        counts = Counter(info["labels"][i] for tags in stored for i in tags)
        return {tag: counts[tag] for tag in info["labels"]}

    def encode(self, tokenizer, tokens_batch, tags_batch, info, max_length: int) -> dict:
        """The model inputs, ``word_ids`` and ``label`` (first-piece tag ids) of word-level tag ids."""
        id2tag = info["labels"]
        tags = None if tags_batch is None else [[id2tag[i] for i in row] for row in tags_batch]
        encoded = encode(tokenizer, tokens_batch, tags, {t: i for i, t in enumerate(id2tag)}, max_length)
        if tags is not None:
            encoded["label"] = encoded.pop("labels")
        return encoded

    # --- model and training -----------------------------------------------------------
    def head(self, info):
        labels = list(info["labels"])
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {t: i for i, t in enumerate(labels)}}

    def label_array(self, values):
        """Stored labels (ragged, one per piece) as ``[n, longest]`` padded with -100."""
        return _padded(values, IGNORE)

    def label_tensor(self, values, info):
        import torch

        return torch.from_numpy(_padded(values, IGNORE))

    def truncate_labels(self, rows, max_length):
        """Cut as the collator cuts ``input_ids``: the first ``max_length - 1`` pieces and the closing [SEP]'s."""
        return [r[: max_length - 1] + r[-1:] if len(r) > max_length else r for r in rows]

    def loss(self, model, batch, config):
        import torch

        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                                                 ignore_index=IGNORE)

    def scores(self, logits, labels, info, full=False):
        labels = self.label_array(labels) if not hasattr(labels, "ndim") or labels.ndim != 2 else labels
        width = min(logits.shape[1], labels.shape[1])
        true, pred = tags_from_labels(logits[:, :width], labels[:, :width], info["labels"])
        result = scores(true, pred)
        return result if full else {k: result[k] for k in self.metrics}

    # --- evaluation -------------------------------------------------------------------
    def baselines(self, train, test, info):
        """The most frequent tag per word form in train, on the test words the model is scored on (those that
        kept a labelled first piece within max_seq_length)."""
        id2tag = info["labels"]
        train_tags = [[id2tag[i] for i in row] for row in train[TAGS]]
        kept = [sum(1 for x in row if x != IGNORE) for row in test["label"]]
        test_tokens = [list(t)[:n] for t, n in zip(test[TOKENS], kept, strict=True)]
        test_tags = [[id2tag[i] for i in row][:n] for row, n in zip(test[TAGS], kept, strict=True)]
        predicted = most_frequent_tag_baseline(train[TOKENS], train_tags, test_tokens)
        return {"most_frequent_tag": scores(test_tags, predicted)}

    def report_sections(self, result):
        import numpy as np

        from kftune.reports import figure_html, new_figure, table_html

        model = result["model"]
        names = model["confusion_labels"]
        matrix = np.asarray(model["confusion_matrix"])
        fig, ax = new_figure(4 + 0.4 * len(names), 3.5 + 0.4 * len(names))
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted type (per word)")
        ax.set_ylabel("true type (per word)")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
        base = result["baselines"].get("most_frequent_tag", {}).get("per_class", {})
        rows = [(kind, s["precision"], s["recall"], s["f1"], base.get(kind, {}).get("f1", 0.0), s["support"])
                for kind, s in model["per_class"].items()]
        return ["<h2>Per entity type (strict IOB2)</h2>",
                table_html(["type", "precision", "recall", "f1", "baseline f1", "support"], rows),
                "<h2>Confusion of entity types, per word</h2>", figure_html(fig)]

    # --- export, serving, prediction --------------------------------------------------
    def outputs(self, logits, info):
        raise TypeError("token classification answers need the texts (character offsets): use text_outputs")

    def v2_outputs(self, logits, info):
        raise TypeError("token classification answers need the texts (character offsets): use v2_text_outputs")

    def text_outputs(self, run_batch, tokenizer, texts: list[str], info, max_length: int,
                     batch_size: int = 32) -> list[dict]:
        """One answer per text (V1 ``predictions``, a predict step's rows): ``{"entities": [...]}``, its
        entities (:func:`entity_spans`) found through ``run_batch`` (an ONNX Runtime or PyTorch runner)."""
        return [{"entities": spans}
                for spans in predict_entities(run_batch, tokenizer, texts, info["labels"], max_length, batch_size)]

    def v2_text_outputs(self, answers: list[dict]) -> list[tuple]:
        """The Open Inference output: ``entities``, BYTES ``[n]``, each text's entities as a JSON string."""
        import numpy as np

        return [("entities", "BYTES", np.array([json.dumps(a["entities"]) for a in answers], dtype=object))]


METRICS = ("precision", "recall", "f1", "accuracy")


def _defaults() -> dict:
    from kftune.data.bundled import BUNDLED_MODEL, TOKEN_DATA

    return {
        "data": TOKEN_DATA,
        "model": BUNDLED_MODEL,
        "max_seq_length": 128,
        "training_mode": "full",
        "metric_for_best_model": "f1",
        "learning_rate": 3e-4,
        "num_train_epochs": 6,
        "per_device_train_batch_size": 16,
        "min_accuracy": 0.0,
    }


TASK = TokenClassification(
    NAME,
    "one IOB2 tag per word (named entities)",
    defaults=_defaults(),
    metrics=METRICS,
    primary="f1",
    best_metrics=("f1", "precision", "recall", "accuracy", "loss"),
    baseline="most_frequent_tag",
)
