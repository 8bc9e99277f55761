"""Reading labelled data: every supported format, and every kind of bad input."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from kftune.data.labelled import read_bundled, read_labelled_data
from kftune.errors import DataError

ROWS = pd.DataFrame({"review": ["good film", "bad film", "fine, I guess"], "stars": [1, 0, 1]})


def test_bundled_data_is_the_real_corpus(bundled_frame):
    assert len(bundled_frame) == 12808  # fresh + rotten; plot summaries dropped
    assert set(bundled_frame["label"]) == {"positive", "negative"}
    assert bundled_frame["label"].value_counts()["positive"] == 7403


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet", ".csv.gz"])
def test_reads_each_file_format(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        ROWS.to_csv(path, index=False)
    elif suffix == ".tsv":
        ROWS.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        ROWS.to_json(path, orient="records", lines=True)
    elif suffix == ".parquet":
        ROWS.to_parquet(path)
    else:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            ROWS.to_csv(f, index=False)
    frame = read_labelled_data(str(path), "review", "stars")
    assert list(frame.columns) == ["text", "label"]
    assert frame["text"].tolist() == ROWS["review"].tolist()
    assert [int(v) for v in frame["label"]] == [1, 0, 1]


@pytest.mark.parametrize("as_dict", [False, True])
def test_reads_save_to_disk_directory(tmp_path, as_dict):
    import datasets

    ds = datasets.Dataset.from_pandas(ROWS)
    if as_dict:
        ds = datasets.DatasetDict({"train": ds, "test": ds})
    ds.save_to_disk(str(tmp_path / "hf"))
    frame = read_labelled_data(str(tmp_path / "hf"), "review", "stars")
    assert len(frame) == (6 if as_dict else 3)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        read_labelled_data(str(tmp_path / "nope.csv"))


def test_unknown_column_lists_the_columns(tmp_path):
    path = tmp_path / "d.csv"
    ROWS.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"d\.csv: no column 'text'; the columns are: review, stars"):
        read_labelled_data(str(path), "text", "stars")


def test_unknown_format(tmp_path):
    path = tmp_path / "d.xlsx"
    path.write_bytes(b"whatever")
    with pytest.raises(DataError, match=r"d\.xlsx: unknown data format '\.xlsx'"):
        read_labelled_data(str(path))
    with pytest.raises(DataError, match="unknown data format 'excel'"):
        read_labelled_data(str(path), data_format="excel")


def test_malformed_csv_row_names_the_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\ngood,1\nbad,0,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv: malformed row: Expected 2 fields in line 3, saw 3"):
        read_labelled_data(str(path))


def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a", "label": 1}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl: line 2: invalid JSON"):
        read_labelled_data(str(path))
    path.write_text('["a list"]\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1: expected a JSON object per line"):
        read_labelled_data(str(path))


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\nok,1\ncaf\u00e9,0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"d\.csv: line 3: byte 0xe9 is not valid UTF-8"):
        read_labelled_data(str(path))


def test_empty_file(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="file is empty"):
        read_labelled_data(str(path))


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"d\.parquet: not a readable Parquet file"):
        read_labelled_data(str(path))


def test_plain_directory_is_rejected(tmp_path):
    with pytest.raises(DataError, match="must be written by datasets.save_to_disk"):
        read_labelled_data(str(tmp_path))


def test_read_bundled_has_no_plot_rows():
    frame = read_bundled()
    assert frame["label"].isin(["positive", "negative"]).all()
