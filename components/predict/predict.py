"""Batch inference of an exported model over files of texts: :func:`predict`.

The export (a directory, or an ``s3://`` / ``gs://`` URI of one) is opened as its task says
(:func:`~kftune.tasks.open_export`): an encoder's ONNX graph, whose texts are cleaned and
truncated as evaluation saw them, or a causal LM answering each text as one user turn, greedily.
The input is one file, a directory of files or an object-store prefix, each read with the
project's reader (:mod:`kftune.data.files`: CSV, TSV, JSON Lines, Parquet). Every file is read
and checked before the model is loaded, so a missing column or an empty text fails at the start,
naming the file, the row and the column.

One output row per input row, in input order:

- ``id``: the ``predict_id_column`` value, or the row's number counted from 0 over all input files;
- ``source``: the file the row came from, relative to the input (only when there are several);
- the task's columns (:meth:`~kftune.tasks.base.Task.prediction_row`): e.g. a class's ``label``,
  ``label_id``, ``probability`` (the label's) and ``p_<label>`` for every label; a causal LM's
  ``generation``.

The predictions are written to a temporary file and renamed onto the output path, or uploaded
to the output URI, only once complete: a failed run leaves no output. In the finetune pipeline
(:func:`predict_to_artifact`) they are the predict step's artifact, also copied to
``predict_output`` when it is given.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from kftune.components.predict.config import PredictConfig
from kftune.data.files import read_file
from kftune.errors import ConfigError, DataError
from kftune.inference.exported import local_export
from kftune.storage import fetch, is_remote, open_location
from kftune.storage.atomic import atomic_file
from kftune.tasks import DEFAULT_TASK, export_task, open_export, task_named

log = logging.getLogger(__name__)

ID, SOURCE = "id", "source"


@dataclass
class InputFile:
    """One file of examples: the name messages show, the ``source`` column's (relative to the input), its texts
    (per input field of the task) and ids."""

    name: str
    relative: str
    texts: dict[str, list[str]]
    ids: list

    def __len__(self) -> int:
        return len(next(iter(self.texts.values())))

    def chunk(self, first: int, size: int) -> dict[str, list[str]]:
        return {name: texts[first : first + size] for name, texts in self.texts.items()}


@contextlib.contextmanager
def local_inputs(data: str) -> Iterator[list[tuple[str, str, Path]]]:
    """(name to show, name relative to ``data``, local path) of every input file: one file, a directory's files
    in name order (a ``datasets.save_to_disk`` directory counts as one), or an ``s3://`` / ``gs://`` object or
    prefix, fetched."""
    if is_remote(data):
        with tempfile.TemporaryDirectory(prefix="kftune-predict-") as tmp:
            root = Path(tmp) / "data"
            paths = fetch(data, root)
            base = data.rstrip("/")
            if len(paths) == 1 and not data.endswith("/") and paths[0].name == base.rsplit("/", 1)[-1]:
                yield [(base, paths[0].name, paths[0])]
            else:
                yield [(f"{base}/{p.relative_to(root).as_posix()}", p.relative_to(root).as_posix(), p)
                       for p in paths]
        return
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory; expected a file or a directory of files of texts")
    if path.is_file() or (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        yield [(str(path), path.name, path)]
        return
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise DataError(f"{path}: the directory holds no files; expected CSV, TSV, JSON Lines or Parquet files")
    yield [(str(p), p.relative_to(path).as_posix(), p) for p in files]


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def read_input(name: str, relative: str, path: Path, config: PredictConfig, task: str) -> InputFile:
    """The texts (and ids) of one file, checked: the columns the task reads exist, no text is empty as the model
    would see it (an encoder's, cleaned as in preprocess; a causal LM's, as they are)."""
    spec = task_named(task)
    try:
        frame = read_file(path, "auto")
    except DataError as e:  # name the file as the user gave it, not a temporary copy
        raise DataError(str(e).replace(str(path), name)) from None
    columns = ", ".join(map(str, frame.columns)) or "(none)"
    wanted = {column: f"{field}_column" if field != "text" else "text_column"
              for field, column in spec.input_columns(config).items()}
    for column, setting in (*wanted.items(), (config.predict_id_column, "predict_id_column")):
        if column and column not in frame.columns:
            raise DataError(f"{name}: no column {column!r}; the columns are: {columns} (set {setting})")
    texts = {}
    for field, column in spec.input_columns(config).items():
        texts[field] = []
        for row, value in enumerate(frame[column].tolist()):
            text = "" if _is_missing(value) else str(value)
            if spec.is_empty(text):
                raise DataError(f"{name}: row {row} (counted from 0): column {column!r} is empty; expected some text")
            texts[field].append(text)
    ids = frame[config.predict_id_column].tolist() if config.predict_id_column else []
    if config.predict_id_column:
        for row, value in enumerate(ids):
            if _is_missing(value):
                raise DataError(f"{name}: row {row} (counted from 0): column {config.predict_id_column!r} (the id) is "
                                "empty; expected a value")
    return InputFile(name, relative, texts, ids)


def check_inputs(config: PredictConfig, task: str) -> int:
    """Read and check every input file as :func:`predict` does before it loads the model (columns there, no empty
    text), for a run that predicts only after training; an ``s3://`` / ``gs://`` input is not fetched for it.
    Returns the rows found (0 for a remote input)."""
    config.validate()
    if is_remote(config.predict_input):
        return 0
    with local_inputs(config.predict_input) as inputs:
        return sum(len(read_input(name, relative, path, config, task)) for name, relative, path in inputs)


def write_frame(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    """``frame`` to ``path`` as CSV, JSON Lines or Parquet."""
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path, index=False)


def deliver(local: Path, output: str) -> None:
    """Put the complete file ``local`` at ``output``: uploaded to a URI, or copied under a temporary name and
    renamed into place, so that it appears complete or not at all."""
    if is_remote(output):
        loc = open_location(output)
        loc.backend.upload(local, loc.uri.prefix)
        return
    with atomic_file(Path(output).expanduser()) as f, local.open("rb") as source:
        shutil.copyfileobj(source, f)


def write_output(frame: pd.DataFrame, output: str, fmt: str) -> None:
    """Write the predictions to a temporary file, then :func:`deliver` them to ``output``."""
    with tempfile.TemporaryDirectory(prefix="kftune-predict-out-") as tmp:
        local = Path(tmp) / f"predictions.{fmt}"
        write_frame(frame, local, fmt)
        deliver(local, output)


def _uniform_ids(ids: list) -> list:
    """Ids as they are, or all as strings where the files gave different types (Parquet needs one type)."""
    return ids if len({type(i) for i in ids}) <= 1 else [str(i) for i in ids]


def predict(model: str | Path, config: PredictConfig) -> dict:
    """Predict on every text of ``config.predict_input`` with the export at ``model``; write
    ``config.predict_output``.

    Returns a summary: task, rows, files, seconds, rows_per_second, output, format.
    """
    from tqdm.auto import tqdm

    config.validate()
    if not config.predict_output:
        raise ConfigError("predict_output is empty; expected a file path or an s3:// / gs:// URI for the predictions")
    fmt = config.resolved_format()
    with contextlib.ExitStack() as stack:
        model_dir = stack.enter_context(local_export(str(model)))
        task = export_task(model_dir) if model_dir.is_dir() else DEFAULT_TASK
        files = [read_input(name, relative, path, config, task)
                 for name, relative, path in stack.enter_context(local_inputs(config.predict_input))]
        total = sum(len(f) for f in files)
        if not total:
            raise DataError(f"{config.predict_input}: no rows to predict on (only header rows, or empty files)")
        exported = open_export(model_dir, int8=config.predict_int8, max_new_tokens=config.max_new_tokens,
                               batch_size=config.predict_batch_size, threads=config.threads)
        log.info("predicting on %d text(s) from %d file(s) of %s with the %s export %s", total, len(files),
                 config.predict_input, task, model)
        rows, start = [], time.perf_counter()
        spec = task_named(task)
        chunk = config.predict_batch_size * spec.predict_chunk_batches
        with tqdm(total=total, desc="predicting", unit="row", mininterval=2) as bar:
            for f in files:
                for first in range(0, len(f), chunk):
                    outputs = exported.predict(f.chunk(first, chunk), progress=False)
                    rows += [spec.prediction_row(o) for o in outputs]
                    bar.update(len(outputs))
        seconds = time.perf_counter() - start
    ids = [i for f in files for i in f.ids] if config.predict_id_column else list(range(total))
    columns = {ID: _uniform_ids(ids)}
    if len(files) > 1:
        columns[SOURCE] = [f.relative for f in files for _ in range(len(f))]
    frame = pd.concat([pd.DataFrame(columns), pd.DataFrame(rows, index=range(total))], axis=1)
    write_output(frame, config.predict_output, fmt)
    summary = {"task": task, "rows": total, "files": len(files), "seconds": round(seconds, 3),
               "rows_per_second": round(total / seconds, 2) if seconds > 0 else 0.0, "output": config.predict_output,
               "format": fmt}
    log.info("wrote %d prediction(s) to %s (%s): %.1f rows/s", total, config.predict_output, fmt,
             summary["rows_per_second"])
    return summary


def predict_to_artifact(model: str | Path, config: PredictConfig, artifact: str | Path) -> dict:
    """The pipeline's predict step: :func:`predict` into the file ``artifact`` (in ``predict_output_format``, or
    the format ``predict_output`` names, else JSON Lines), then a copy to ``config.predict_output`` when given.

    Returns :func:`predict`'s summary, its ``output`` the ``predict_output`` (or the artifact) and ``artifact``
    the artifact's path.
    """
    config.validate()  # before any work: a bad predict_output fails here, not after predicting
    fmt = config.resolved_format()
    summary = predict(model, replace(config, predict_output=str(artifact), predict_output_format=fmt))
    if config.predict_output:
        deliver(Path(artifact), config.predict_output)
        log.info("copied the predictions to %s", config.predict_output)
    return summary | {"output": config.predict_output or str(artifact), "artifact": str(artifact)}
