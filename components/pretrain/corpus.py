"""Read an unlabelled pretraining corpus into a list of texts.

Formats: a .txt file (one text per line), CSV, TSV, JSON Lines, Parquet (text formats may end
.gz/.bz2/.xz; pandas decompresses them), a ``datasets.save_to_disk`` directory, an ``s3://`` or
``gs://`` object holding one of those files, or ``bundled:rotten-tomatoes-plots``. Every problem
is one :class:`DataError` line naming the corpus and, where there is one, the column.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tempfile
from pathlib import Path

from kftune.data import bundled
from kftune.errors import DataError

_COMPRESSED = (".gz", ".bz2", ".xz")
TABULAR = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _read_column(frame, column: str, shown: str) -> list:
    if column not in frame.columns:
        available = ", ".join(map(str, frame.columns)) or "(none)"
        raise DataError(f"{shown}: no column {column!r}; the columns are: {available} (set pretrain_text_column)")
    return frame[column].tolist()


def _read_local(path: Path, column: str, shown: str) -> list:
    import pandas as pd

    if path.is_dir():
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:
            raise DataError(f"{shown}: not a readable datasets.save_to_disk directory: {e}") from e
        parts = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
        return [text for part in parts for text in _read_column(part.to_pandas(), column, shown)]
    suffix = _suffix(path)
    try:
        if suffix == ".txt":
            opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)
            with opener(path, "rt", encoding="utf-8") as f:
                return f.read().splitlines()
        if suffix in TABULAR:
            frame = pd.read_csv(path, sep=TABULAR[suffix], dtype=object, encoding="utf-8")
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype=False)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            raise DataError(f"{shown}: unknown corpus format {''.join(path.suffixes) or '(no suffix)'!r}; expected "
                            ".txt, .csv, .tsv, .jsonl or .parquet (text formats may end .gz/.bz2/.xz) or a "
                            "datasets.save_to_disk directory")
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{shown}: file is empty; expected unlabelled texts") from e
    except (UnicodeDecodeError, ValueError, OSError, EOFError, lzma.LZMAError, pd.errors.ParserError) as e:
        raise DataError(f"{shown}: cannot read the corpus: {' '.join(str(e).split())}") from e
    return _read_column(frame, column, shown)


def read_corpus(corpus: str, text_column: str = "text") -> list[str]:
    """The non-empty texts of ``corpus`` (whitespace stripped), in file order; a corpus with none is an error."""
    if corpus == bundled.PLOTS_CORPUS:
        texts = bundled.bundled_plot_texts()
    elif corpus.startswith(("s3://", "gs://")):
        from kftune.storage import fetch

        with tempfile.TemporaryDirectory(prefix="kftune-corpus-") as tmp:
            paths = fetch(corpus, tmp)
            if len(paths) != 1:
                raise DataError(f"{corpus}: expected one corpus file under that URI, found {len(paths)}")
            texts = _read_local(Path(paths[0]), text_column, corpus)
    else:
        path = Path(corpus).expanduser()
        if not path.exists():
            raise DataError(f"{corpus}: no such file or directory; expected an unlabelled text corpus")
        texts = _read_local(path, text_column, corpus)
    kept = [str(t).strip() for t in texts if isinstance(t, str) and str(t).strip()]
    if not kept:
        raise DataError(f"{corpus}: column {text_column!r} holds no non-empty text; expected unlabelled texts")
    return kept
