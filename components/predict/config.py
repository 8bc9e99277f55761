"""Settings of the predict step: what to read, where to write, how to run the export.

Every name of predict's own starts with ``predict`` so that none collides with another stage's
in the finetune pipeline's flat run parameters (``predict_batch_size`` beside train's batch
sizes, ``predict_input`` beside preprocess's ``data``), as pretrain's start with ``pretrain``.
Two settings mean the same in a pipeline and are shared groups
(:mod:`kftune.settings.fields`): ``text_column`` (:class:`TextColumn`, preprocess's
column of texts) and ``max_new_tokens`` (:class:`GenerationBudget`, evaluate's generation budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kftune.errors import ConfigError
from kftune.settings.fields import check_settings, internal, setting
from kftune.settings.groups import GenerationBudget, TextColumn
from kftune.tasks import task_groups

OUTPUT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
ARTIFACT_FORMAT = "jsonl"
"""The predictions artifact's format when neither ``predict_output_format`` nor ``predict_output`` names one."""


@dataclass
class PredictData:
    """Which texts predict reads and where its predictions go."""

    predict_input: str = ""
    """Texts to predict on with the exported model: a CSV, TSV, JSON Lines or Parquet file, a directory of such files (read in name order), or an s3://bucket/prefix or gs://bucket/prefix of them; in the finetune pipeline, empty: no predict step."""  # noqa: E501
    predict_output: str = ""
    """Where the predictions go: a file path, or an s3:// or gs:// URI (uploaded once complete); in a pipeline, where the predict step copies its predictions artifact (on a cluster: a URI), empty: the artifact only."""  # noqa: E501
    predict_output_format: Literal["auto", "csv", "jsonl", "parquet"] = "auto"
    """Format of the predictions; auto: from predict_output's extension (.csv, .jsonl, .parquet), else JSON Lines."""  # noqa: E501
    predict_id_column: str = ""
    """Column of predict_input whose value each prediction carries as its id; empty: the row number (from 0, counted over all input files)."""  # noqa: E501


@dataclass
class PredictRun:
    """How the export runs over the texts."""

    predict_batch_size: int = setting(32, ge=1)
    """Texts run through the exported model at a time by predict."""
    predict_int8: bool = False
    """Predict with an ONNX export's dynamically quantized model.int8.onnx instead of model.onnx."""
    threads: int = internal(0, ge=0)


@dataclass
class PredictConfig(PredictRun, GenerationBudget, *task_groups("predict"), TextColumn, PredictData):
    """Batch inference of an exported model over files of texts."""

    def resolved_format(self) -> str:
        """The output format: ``predict_output_format``, or the one ``predict_output``'s extension names
        (:data:`ARTIFACT_FORMAT` where there is no ``predict_output``)."""
        if self.predict_output_format != "auto":
            return self.predict_output_format
        if not self.predict_output:
            return ARTIFACT_FORMAT
        name = self.predict_output.rstrip("/").rsplit("/", 1)[-1].lower()
        for suffix, fmt in OUTPUT_SUFFIXES.items():
            if name.endswith(suffix):
                return fmt
        raise ConfigError(f"predict_output {self.predict_output!r}: cannot tell the format from its extension; "
                          f"expected one of {', '.join(OUTPUT_SUFFIXES)}, or set predict_output_format")

    def validate(self) -> None:
        """Reject values outside their ranges; ``predict_output`` may be empty (a pipeline's artifact only)."""
        check_settings(self)
        if not self.predict_input:
            raise ConfigError("predict_input is empty; expected a file, a directory or an s3:// / gs:// prefix of "
                              "texts")
        self.resolved_format()
        if not self.text_column:
            raise ConfigError("text_column is empty; expected the name of the column holding the texts")
