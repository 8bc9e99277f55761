"""Settings of the predict step: what to read, where to write, how to run the export."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kftune.components.common.errors import ConfigError
from kftune.components.common.settings import check_choices, internal

OUTPUT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}


@dataclass
class PredictConfig:
    """Batch inference of an exported model over files of texts."""

    input: str = ""
    """Texts to predict on: a CSV, TSV, JSON Lines or Parquet file, a directory of such files (read in name order), or an s3://bucket/prefix or gs://bucket/prefix of them."""  # noqa: E501
    output: str = ""
    """Where the predictions go: a file path, or an s3:// or gs:// URI (uploaded once complete)."""
    output_format: Literal["auto", "csv", "jsonl", "parquet"] = "auto"
    """Format of the predictions; auto: from the output's extension (.csv, .jsonl, .parquet)."""
    text_column: str = "text"
    """Column of the input holding the texts (causal-lm: the prompts, each asked as one user turn)."""
    id_column: str = ""
    """Column of the input whose value each prediction carries as its id; empty: the row number (from 0, counted over all input files)."""  # noqa: E501
    batch_size: int = 32
    """Texts run through the model at a time."""
    max_new_tokens: int = 0
    """causal-lm: greedy generations stop after this many tokens; 0: the export's (the evaluate step's budget)."""
    int8: bool = False
    """classification: run the export's dynamically quantized model.int8.onnx instead of model.onnx."""
    threads: int = internal(0)

    def resolved_format(self) -> str:
        """The output format: ``output_format``, or the one the output's extension names."""
        if self.output_format != "auto":
            return self.output_format
        name = self.output.rstrip("/").rsplit("/", 1)[-1].lower()
        for suffix, fmt in OUTPUT_SUFFIXES.items():
            if name.endswith(suffix):
                return fmt
        raise ConfigError(f"output {self.output!r}: cannot tell the format from its extension; expected one of "
                          f"{', '.join(OUTPUT_SUFFIXES)}, or set output_format")

    def validate(self) -> None:
        check_choices(self)
        if not self.input:
            raise ConfigError("input is empty; expected a file, a directory or an s3:// / gs:// prefix of texts")
        if not self.output:
            raise ConfigError("output is empty; expected a file path or an s3:// / gs:// URI for the predictions")
        self.resolved_format()
        if not self.text_column:
            raise ConfigError("text_column is empty; expected the name of the column holding the texts")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0 (0: the export's), got {self.max_new_tokens}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0: the CPUs the process may use), got {self.threads}")

