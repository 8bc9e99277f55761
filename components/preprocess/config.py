"""Preprocessing settings: where the data is, how it is cleaned, split, augmented and tokenized."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kftune.data.schema import LABEL
from kftune.errors import ConfigError
from kftune.settings.fields import PretrainedModel, Seeding, TaskChoice, TextColumn, check_choices
from kftune.tasks.token_classification import FORMATS as TOKEN_FORMATS


@dataclass
class DataSource(TextColumn):
    """The labelled input data (its text column: :class:`TextColumn`, which predict shares)."""

    data: str = "auto"
    """Input data: a CSV/TSV/JSONL/Parquet file, a directory of such shards or a datasets.save_to_disk directory, local or s3://bucket/path or gs://bucket/path (credentials from the environment), for token-classification JSONL/JSON/Parquet rows with tokens and tags lists (IOB2; IOB1 and BIOES converted) or a CoNLL-style .conll/.iob/.bio file (a token and its tag per line, the tag last), bundled:rotten-tomatoes (Rotten Tomatoes reviews, positive/negative), bundled:rotten-tomatoes-instructions (the same reviews as prompt/completion pairs), bundled:vader-sentiment (VADER's tweets and Amazon snippets rated for sentiment intensity, -4..4), bundled:wnut16-entity-types (WNUT-16 tweets with the set of entity types each mentions) or bundled:wnut16 (the same tweets with a BIO tag per token); auto: the task's bundled data (classification: bundled:rotten-tomatoes, causal-lm: bundled:rotten-tomatoes-instructions, regression: bundled:vader-sentiment, multilabel: bundled:wnut16-entity-types, token-classification: bundled:wnut16)."""  # noqa: E501
    label_column: str = LABEL
    """Column holding the label: a class (strings or integers; classification), a number (regression) or a list of labels (multilabel: a JSON list, a Parquet list, or text joined by label_separator)."""  # noqa: E501
    label_separator: str = ""
    """multilabel: labels joined by this separator in one text cell (e.g. "," or "|"); empty: labels come as lists."""  # noqa: E501
    data_format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "hf-disk"] = "auto"
    """File format; auto reads it from the file name."""


@dataclass
class Instructions:
    """Instruction data (task causal-lm)."""

    instruction_format: Literal["auto", "prompt-completion", "alpaca", "messages"] = "auto"
    """Columns of instruction data: prompt + completion, instruction + input + output (alpaca), or messages (a list of {role, content}); auto: the first whose columns are there."""  # noqa: E501
    overlong: Literal["drop", "truncate_prompt"] = "drop"
    """Examples longer than max_seq_length tokens: drop them (counted in the data report), or truncate_prompt: cut the last user message from its end until they fit."""  # noqa: E501


@dataclass
class TokenData:
    """Token-classification data (task token-classification)."""

    tokens_column: str = "tokens"
    """token-classification: column of JSON Lines, JSON or Parquet rows holding each sentence's list of words."""
    tags_column: str = "tags"
    """token-classification: column holding each sentence's list of tags, one per word (IOB2: O, B-TYPE, I-TYPE)."""
    token_format: Literal[TOKEN_FORMATS] = "auto"
    """token-classification: file format; auto reads it from the file name (.jsonl, .json, .parquet; .conll, .iob, .bio and .txt are CoNLL-style: a word and its tag per line, the tag last, sentences split by blank lines)."""  # noqa: E501
    strict_iob2: bool = False
    """token-classification: refuse tags that are not strict IOB2 (an I-TYPE that starts an entity, as IOB1 writes it, or BIOES/BILOU prefixes) instead of converting them and counting the conversions in the data report."""  # noqa: E501


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
    """Texts are tokenized and truncated to this many tokens (causal-lm: prompt and completion together); 0: the task's (classification: 128, causal-lm: 256, regression: 128, multilabel: 128, token-classification: 128)."""  # noqa: E501


@dataclass
class PreprocessConfig(Seeding, Tokenization, Augmentation, Splitting, TokenData, Instructions, PretrainedModel,
                       DataSource, TaskChoice):
    """What preprocessing does. Defaults are those of the finetune pipeline."""

    def validate(self) -> None:
        """Reject values outside their ranges before any work starts."""
        check_choices(self)
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
        if not self.tokens_column or not self.tags_column or self.tokens_column == self.tags_column:
            raise ConfigError(f"tokens_column and tags_column must be two different column names, got "
                              f"{self.tokens_column!r} and {self.tags_column!r}")
        if self.max_rows < 0 or self.augment_copies < 0:
            raise ConfigError("max_rows and augment_copies must be >= 0")
        if not 0 <= self.augment_probability <= 0.5:
            raise ConfigError(f"augment_probability must be in [0, 0.5], got {self.augment_probability}")
