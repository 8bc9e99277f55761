"""Preprocessing settings: where the data is, how it is cleaned, split, augmented and tokenized."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kftune.data.schema import LABEL
from kftune.errors import ConfigError
from kftune.settings.fields import check_choices
from kftune.settings.groups import PretrainedModel, Seeding, TextColumn
from kftune.tasks import TaskChoice, check_task_settings, task_groups


@dataclass
class DataSource(TextColumn):
    """The labelled input data (its text column: :class:`TextColumn`, which predict shares)."""

    data: str = "auto"
    """Input data: a CSV/TSV/JSONL/Parquet file, a directory of such shards or a datasets.save_to_disk directory, local or s3://bucket/path or gs://bucket/path (credentials from the environment), in the columns the task reads, or a bundled data set; auto: the task's bundled data."""  # noqa: E501
    label_column: str = LABEL
    """Column holding the label: a class (strings or integers), a number or a list of labels, as the task takes it."""  # noqa: E501
    data_format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "hf-disk"] = "auto"
    """File format; auto reads it from the file name."""


@dataclass
class Splitting:
    """Cleaning, sampling and the stratified split."""

    min_chars: int = 3
    """Texts shorter than this (after cleaning) are dropped."""
    max_chars: int = 5000
    """Texts longer than this (after cleaning) are dropped."""
    max_rows: int = 0
    """Use a stratified sample of this many cleaned rows (0 uses all); for quick runs."""
    validation_fraction: float = 0.1
    """Share of rows in the validation split (picks the best epoch, scores search trials)."""
    test_fraction: float = 0.1
    """Share of rows in the test split (final scores only)."""


@dataclass
class Augmentation:
    """Noisy copies of training texts."""

    augment_copies: int = 0
    """Noisy copies (word deletion/swap/replacement) added per training example; 0 is off."""
    augment_probability: float = 0.1
    """Per-word probability of deletion and replacement, and swap rate, of augmentation."""


@dataclass
class Tokenization:
    """How texts become token ids (with the pretrained model's fast tokenizer)."""

    max_seq_length: int = 0
    """Texts are tokenized and truncated to this many tokens (a conversation: prompt and completion together); 0: the task's."""  # noqa: E501


@dataclass
class PreprocessConfig(Seeding, Tokenization, Augmentation, Splitting, *task_groups("preprocess"), PretrainedModel,
                       DataSource, TaskChoice):
    """What preprocessing does (with the tasks' own data settings). Defaults are those of the finetune pipeline."""

    def validate(self) -> None:
        """Reject values outside their ranges before any work starts."""
        check_choices(self)
        check_task_settings(self)
        if not 0 < self.validation_fraction < 1 or not 0 < self.test_fraction < 1:
            raise ConfigError("validation_fraction and test_fraction must each be in (0, 1)")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ConfigError(
                "validation_fraction + test_fraction must be < 0.9 to leave a training split"
            )
        if self.min_chars < 1 or self.max_chars < self.min_chars:
            raise ConfigError(f"need 1 <= min_chars <= max_chars, got {self.min_chars}, {self.max_chars}")
        if self.max_seq_length < 8 and not (self.task == "auto" and self.max_seq_length == 0):
            raise ConfigError(f"max_seq_length must be >= 8, got {self.max_seq_length}")
        if self.max_rows < 0 or self.augment_copies < 0:
            raise ConfigError("max_rows and augment_copies must be >= 0")
        if not 0 <= self.augment_probability <= 0.5:
            raise ConfigError(f"augment_probability must be in [0, 0.5], got {self.augment_probability}")
