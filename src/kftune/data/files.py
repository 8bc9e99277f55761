"""Read tabular data files: CSV, TSV, JSON Lines, Parquet, ``datasets.save_to_disk`` directories.

The text formats may be .gz/.bz2/.xz compressed. A path may be one file, a directory of shards
in one format (read in name order) or an ``s3://`` / ``gs://`` object or prefix. Every problem is
raised as a :class:`DataError` naming the file, and the row or column where there is one.
Preprocess reads its training data with it, predict its input files.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import tempfile
from pathlib import Path

import pandas as pd

from kftune.errors import DataError
from kftune.storage import fetch, is_remote

FORMATS = ("auto", "csv", "tsv", "jsonl", "parquet", "hf-disk")
_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def format_from_suffix(path: Path, formats: dict[str, str]) -> str | None:
    """The format ``formats`` gives ``path``'s last suffix, looking through a compression suffix (.gz, .bz2,
    .xz), or None: the one format-and-compression detector of every reader."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _OPENERS:
        suffixes = suffixes[:-1]
    return formats.get(suffixes[-1]) if suffixes else None


def detect_format(path: Path) -> str:
    """Infer the format from a directory's marker files or a file's suffixes."""
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "hf-disk"
        raise DataError(
            f"{path}: a directory must be written by datasets.save_to_disk "
            "(dataset_dict.json or state.json expected)"
        )
    fmt = format_from_suffix(path, _SUFFIX_FORMATS)
    if fmt:
        return fmt
    raise DataError(
        f"{path}: unknown data format {''.join(path.suffixes) or '(no suffix)'!r}; expected one "
        "of .csv, .tsv, .jsonl, .parquet (text formats may end .gz/.bz2/.xz) or a "
        "datasets.save_to_disk directory; or pass the format explicitly"
    )


def read_text(path: Path) -> str:
    """Decompress if needed and decode as strict UTF-8, naming the line of a bad byte."""
    opener = _OPENERS.get(path.suffix.lower(), open)
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise DataError(f"{path}: cannot read file: {e}") from e
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: byte 0x{raw[e.start]:02x} is not valid UTF-8; "
            "expected UTF-8 text (re-encode the file, e.g. iconv -t UTF-8)"
        ) from e


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    text = read_text(path)
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, on_bad_lines="error", dtype=object)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: file is empty; expected a header row and data rows") from e
    except pd.errors.ParserError as e:
        # pandas says e.g. "Error tokenizing data. C error: Expected 2 fields in line 4, saw 3"
        detail = str(e).split("C error: ")[-1].strip()
        raise DataError(f"{path}: malformed row: {detail}") from e


def jsonl_records(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSON Lines file; a DataError names the line of anything
    else."""
    records = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {number}: invalid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise DataError(
                f"{path}: line {number}: expected a JSON object per line, got {type(row).__name__}"
            )
        records.append((number, row))
    return records


def _read_jsonl(path: Path) -> pd.DataFrame:
    return pd.DataFrame([row for _, row in jsonl_records(path)])


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file: {e}") from e


def _read_hf_disk(path: Path) -> pd.DataFrame:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"{path}: not a readable datasets.save_to_disk directory: {e}") from e
    if isinstance(loaded, datasets.DatasetDict):
        return pd.concat([split.to_pandas() for split in loaded.values()], ignore_index=True)
    return loaded.to_pandas()


def read_file(path: Path, data_format: str) -> pd.DataFrame:
    fmt = detect_format(path) if data_format == "auto" else data_format
    reader = {
        "csv": lambda p: _read_delimited(p, ","),
        "tsv": lambda p: _read_delimited(p, "\t"),
        "jsonl": _read_jsonl,
        "parquet": _read_parquet,
        "hf-disk": _read_hf_disk,
    }[fmt]
    return reader(path)


def _fetch_remote(uri: str, dest: Path) -> str:
    """Download one object or a prefix of shards (or a ``save_to_disk`` directory) to ``dest``;
    return the local path to read: the file, or the directory of shards."""
    paths = fetch(uri, dest / "data")
    single = len(paths) == 1 and paths[0] == dest / "data" / uri.rstrip("/").rsplit("/", 1)[-1]
    return str(paths[0]) if single and not uri.endswith("/") else str(dest / "data")


def read_frame(data: str, data_format: str = "auto") -> tuple[pd.DataFrame, str]:
    """Read ``data`` as it is: (every column of every row, the local path read, for messages).

    ``data`` is a local file or directory (a ``save_to_disk`` directory, or a directory of shards
    in one format, read in name order) or an ``s3://`` / ``gs://`` object or prefix of shards
    (credentials from the environment); ``data_format`` one of ``FORMATS`` (``auto`` infers it).
    """
    if data_format not in FORMATS:
        raise DataError(f"unknown data format {data_format!r}; expected one of {', '.join(FORMATS)}")
    if is_remote(data):
        with tempfile.TemporaryDirectory(prefix="kftune-ingest-") as tmp:
            local = _fetch_remote(data, Path(tmp))
            try:
                frame, _ = read_frame(local, data_format)
            except DataError as e:  # name the object, not the temporary copy
                raise DataError(str(e).replace(local, data.rstrip("/"))) from None
            return frame, data.rstrip("/")
    path = Path(data)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir() and not (path / "dataset_dict.json").is_file() and not (path / "state.json").is_file():
        shards = sorted(p for p in path.rglob("*") if p.is_file())
        if shards and data_format != "hf-disk":  # a directory of shards: read each, in name order
            return pd.concat([read_file(p, data_format) for p in shards], ignore_index=True), str(path)
    return read_file(path, data_format), str(path)
