"""Pretraining settings: domain-adaptive masked-language-model training before fine-tuning.

Every name starts with ``pretrain`` so that none collides with a training setting in a pipeline's
flat run parameters (``pretrain_learning_rate`` beside train's ``learning_rate``); the base model,
the seed and the task are the shared groups the other stages read.
"""

from __future__ import annotations

from dataclasses import dataclass

from kftune.errors import ConfigError
from kftune.settings.fields import check_settings, setting
from kftune.settings.groups import PretrainedModel, Seeding
from kftune.tasks import AUTO, TASKS, TaskChoice


@dataclass
class MaskedLanguageModeling:
    """Optional masked-language-model training of the base model on unlabelled text; its model is what train fine-tunes."""  # noqa: E501

    pretrain: bool = False
    """Before fine-tuning, continue the base model's masked-language-model training on in-domain text (classification); the fine-tuning step then starts from that model."""  # noqa: E501
    pretrain_corpus: str = ""
    """Unlabelled text to pretrain on besides (or instead of) the training texts: a .txt file (one text per line), a CSV/TSV/JSON Lines/Parquet file or a datasets.save_to_disk directory (column pretrain_text_column), an s3:// or gs:// object, or bundled:rotten-tomatoes-plots (the bundled data's ~1,100 plot summaries); empty: none."""  # noqa: E501
    pretrain_text_column: str = "text"
    """Column of pretrain_corpus that holds the text (tabular formats)."""
    pretrain_on_train_texts: bool = True
    """Also pretrain on the texts of the preprocessed training split (never validation or test)."""
    pretrain_mlm_probability: float = setting(0.15, gt=0, lt=1)
    """Share of tokens (with whole-word masking: of words) masked and predicted."""
    pretrain_whole_word_mask: bool = True
    """Mask all word pieces of a word together (words split at whitespace, from the fast tokenizer's offsets)."""
    pretrain_epochs: int = setting(1, ge=1)
    """Passes over the pretraining texts."""
    pretrain_learning_rate: float = setting(1e-4, gt=0, lt=1)
    """Peak AdamW learning rate of pretraining (linear warmup over 6% of the steps, then linear decay)."""
    pretrain_batch_size: int = setting(32, ge=1)
    """Texts per pretraining batch (batched by length)."""
    pretrain_max_steps: int = setting(0, ge=0)
    """Stop pretraining after this many optimizer steps (0: no limit)."""
    pretrain_max_length: int = setting(128, ge=8)
    """Texts are truncated to this many tokens for pretraining."""
    pretrain_holdout_fraction: float = setting(0.05, gt=0, lt=0.5)
    """Share of the pretraining texts held out to measure the masked-LM loss before and after (not trained on)."""


@dataclass
class PretrainConfig(MaskedLanguageModeling, PretrainedModel, Seeding, TaskChoice):
    """What the pretrain step does: its own settings, the base model, the seed and the task."""

    def validate(self) -> None:
        """Reject values outside their ranges, and settings that do not go together, before any work starts."""
        check_settings(self)
        if self.task != AUTO and not TASKS[self.task].pretrainable:
            encoders = ", ".join(name for name, task in TASKS.items() if task.pretrainable)
            raise ConfigError(f"pretrain is masked-language-model training of an encoder (tasks {encoders}), "
                              f"not of task {self.task}")
        if not self.pretrain_on_train_texts and not self.pretrain_corpus.strip():
            raise ConfigError("pretrain has nothing to train on: set pretrain_corpus or pretrain_on_train_texts")
