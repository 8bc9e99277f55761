"""Preprocessing settings: where the data is, how it is cleaned, split, augmented and tokenized."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kftune.data.schema import LABEL
from kftune.errors import ConfigError
from kftune.settings.fields import check_settings, setting
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

    min_chars: int = setting(3, ge=1)
    """Texts shorter than this (after cleaning) are dropped."""
    max_chars: int = 5000
    """Texts longer than this (after cleaning) are dropped."""
    max_rows: int = setting(0, ge=0)
    """Use a stratified sample of this many cleaned rows (0 uses all); for quick runs."""
    validation_fraction: float = setting(0.1, gt=0, lt=1)
    """Share of rows in the validation split (picks the best epoch, scores search trials)."""
    test_fraction: float = setting(0.1, gt=0, lt=1)
    """Share of rows in the test split (final scores only)."""


@dataclass
class Augmentation:
    """Noisy copies of training texts."""

    augment_copies: int = setting(0, ge=0)
    """Noisy copies (word deletion/swap/replacement) added per training example; 0 is off."""
    augment_probability: float = setting(0.1, ge=0, le=0.5)
    """Per-word probability of deletion and replacement, and swap rate, of augmentation."""


@dataclass
class Tokenization:
    """How texts become token ids (with the pretrained model's fast tokenizer)."""

    max_seq_length: int = setting(0, ge=8, auto=True)
    """Texts are tokenized and truncated to this many tokens (a conversation: prompt and completion together); 0: the task's."""  # noqa: E501


@dataclass
class PreprocessConfig(Seeding, Tokenization, Augmentation, Splitting, *task_groups("preprocess"), PretrainedModel,
                       DataSource, TaskChoice):
    """What preprocessing does (with the tasks' own data settings). Defaults are those of the finetune pipeline."""

    def validate(self) -> None:
        """Reject values outside their ranges, and settings that do not go together, before any work starts."""
        check_settings(self)
        check_task_settings(self)
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ConfigError("validation_fraction + test_fraction must be < 0.9 to leave a training split")
        if self.max_chars < self.min_chars:
            raise ConfigError(f"need min_chars <= max_chars, got {self.min_chars}, {self.max_chars}")
