"""Settings groups that more than one stage reads, declared once here: :class:`PretrainedModel` (the tokenizer in
preprocess, the weights in train), :class:`Seeding`, :class:`TextColumn` (the data's texts in preprocess, the texts
predict reads) and :class:`GenerationBudget` (evaluate's and predict's greedy generations). A pipeline whose stages
share a group shows it once and hands the one value to each of them."""

from __future__ import annotations

from dataclasses import dataclass

from kftune.data.schema import TEXT
from kftune.settings.fields import setting


@dataclass
class PretrainedModel:
    """The model fine-tuning starts from."""

    model: str = "auto"
    """Pretrained model: a Hugging Face model directory, local or at s3://bucket/prefix or gs://bucket/prefix, a bundled model (bundled:all-MiniLM-L6-v2, bundled:SmolLM2-135M-Instruct), or a hub id where the hub is reachable; auto: the task's bundled model."""  # noqa: E501


@dataclass
class Seeding:
    """One seed for the whole run."""

    seed: int = setting(42, ge=0)
    """Seed of the split, the augmentation, the initialisation, the batch order and a causal LM's few-shot baseline examples: the same seed gives the same model and the same evaluation."""  # noqa: E501


@dataclass
class TextColumn:
    """Where tabular data keeps its texts."""

    text_column: str = TEXT
    """Column holding the text: of the labelled data, and of the files predict reads (a causal LM's predictions: the prompts, each asked as one user turn)."""  # noqa: E501


@dataclass
class GenerationBudget:
    """How long a causal LM's greedy answers may grow."""

    max_new_tokens: int = setting(0, ge=0)
    """Causal LMs: greedy generations (evaluate's answers to the test prompts, predict's) stop after this many tokens; 0: the longest training completion plus 4 (at most 256), which the export records for predict."""  # noqa: E501
