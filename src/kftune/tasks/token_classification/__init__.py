"""token-classification: one IOB2 tag per word (named-entity recognition).

Data: JSON Lines / JSON / Parquet rows of word lists and tag lists, or CoNLL-style text
(:mod:`~kftune.tasks.token_classification.data`); the labels go on each word's first word piece.
Head: ``AutoModelForTokenClassification``; loss: cross-entropy over the labelled pieces. Scores:
entity-level precision, recall and F1 (seqeval, strict IOB2), token accuracy, a confusion
matrix of entity types; baseline: the most frequent tag of each word form
(:mod:`~kftune.tasks.token_classification.entities`); paired bootstrap intervals of each score
and gain over the test sentences. Served and predicted: entity spans with character offsets into
the raw text.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kftune.data.bundled import TOKEN_DATA
from kftune.data.schema import LENGTH
from kftune.errors import ConfigError, DataError
from kftune.tasks.base import Prepared
from kftune.tasks.encoder import ENCODER_DEFAULTS, EncoderTask, encoder_search_space
from kftune.tasks.token_classification.data import (
    CLEANING_RULES,
    CONVERSIONS,
    FORMATS,
    IGNORE,
    NAME,
    OUTSIDE,
    TAGS,
    TOKENS,
    WHERE,
    as_list,
    clean_token_data,
    encode,
    read_token_data,
    stratify_keys,
    tag_list,
)
from kftune.tasks.token_classification.entities import (
    ONNX_LOGITS_AXES,
    entity_types,
    label_tags,
    most_frequent_tag_baseline,
    predict_entities,
    scores,
    scores_from_counts,
    sentence_statistics,
    tags_from_labels,
)

# ---------------------------------------------------------------------------------------------
# The task: the hooks the stages call


def _padded(rows, fill: int):
    """Ragged integer rows as one int64 array ``[n, longest]``, padded with ``fill``."""
    import numpy as np

    rows = [list(r) for r in rows]
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@dataclass
class TokenData:
    """Token-classification data."""

    tokens_column: str = TOKENS
    """Column of JSON Lines, JSON or Parquet rows holding each sentence's list of words."""
    tags_column: str = TAGS
    """Column holding each sentence's list of tags, one per word (IOB2: O, B-TYPE, I-TYPE)."""
    token_format: Literal[FORMATS] = "auto"
    """File format; auto reads it from the file name (.jsonl, .json, .parquet; .conll, .iob, .bio and .txt are CoNLL-style: a word and its tag per line, the tag last, sentences split by blank lines)."""  # noqa: E501
    strict_iob2: bool = False
    """Refuse tags that are not strict IOB2 (an I-TYPE that starts an entity, as IOB1 writes it, or BIOES/BILOU prefixes) instead of converting them and counting the conversions in the data report."""  # noqa: E501


FILE_SUFFIXES = (".conll", ".iob", ".bio")
"""Data read as CoNLL-style token data by its name alone (task auto)."""


class TokenClassification(EncoderTask):
    """Token classification (see the module docstring). The dataset artifact holds per sentence:
    ``tokens`` (the words), ``tags`` (their tag ids), the model inputs, ``word_ids`` and ``label``
    (the tag id on each word's first piece, -100 elsewhere); logits are ``[sentences, pieces,
    tags]`` (padded), labels ``[sentences, pieces]`` (padded with -100)."""

    auto_model = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    pipeline_tag = "token-classification"
    logits_axes = ONNX_LOGITS_AXES
    intervals = True
    detect_order = 10
    augmentable = False

    def check_settings(self, config):
        if not isinstance(config, TokenData):
            return
        if not config.tokens_column or not config.tags_column or config.tokens_column == config.tags_column:
            raise ConfigError(f"tokens_column and tags_column must be two different column names, got "
                              f"{config.tokens_column!r} and {config.tags_column!r}")

    # --- preprocess -------------------------------------------------------------------
    def detect(self, frame, config):
        columns = {config.tokens_column, config.tags_column}
        if columns <= set(map(str, frame.columns)):
            return f"columns {config.tokens_column} and {config.tags_column}"
        return None

    def reads_file(self, data):
        from kftune.data.files import format_from_suffix

        return format_from_suffix(Path(data.rstrip("/")), dict.fromkeys(FILE_SUFFIXES, "conll")) is not None

    def read(self, config, frame=None) -> tuple:
        """(frame with tokens and tags, source, rows read, counts per cleaning rule) of ``config.data`` (or of
        the bundled WNUT-16 tweets)."""
        import pandas as pd

        from kftune.data import bundled

        if config.data == bundled.TOKEN_DATA:
            sentences = bundled.bundled_token_sentences()
            frame, source = pd.DataFrame({TOKENS: [s[0] for s in sentences], TAGS: [s[1] for s in sentences],
                                          WHERE: [f"sentence {i}" for i in range(1, len(sentences) + 1)]}), config.data
        else:
            frame, source = read_token_data(config.data, config.token_format, config.tokens_column, config.tags_column)
        cleaned, counts = clean_token_data(frame, source, config.strict_iob2)
        return cleaned, source, len(frame), counts

    def prepare(self, config, frame=None) -> Prepared:
        frame, source, rows_read, counts = self.read(config)
        if config.max_rows and config.max_rows < len(frame):
            frame = frame.sample(n=config.max_rows, random_state=config.seed).reset_index(drop=True)
        self.check_labels(frame[TAGS], config, source)
        return Prepared(frame, source, rows_read, {k: counts[k] for k in CLEANING_RULES},
                        {"converted_tags": {k: counts[k] for k in CONVERSIONS}})

    def parse_labels(self, labels, source, column, config):
        return labels.map(as_list)

    def label_info(self, labels) -> dict:
        return {"labels": tag_list(labels)}

    def data_info(self, prepared, config):
        return self.label_info(prepared.frame[TAGS])

    def store_labels(self, frame, info):
        return frame  # the tags stay words until each split is encoded: the strata read them

    def strata(self, frame, info):
        import pandas as pd

        return pd.Series(stratify_keys(list(frame[TAGS])), index=frame.index)

    def encode_labels(self, labels, info):
        tag2id = {t: i for i, t in enumerate(info["labels"])}
        return [[tag2id[t] for t in tags] for tags in labels]

    def label_feature(self, info):
        import datasets

        return datasets.Sequence(datasets.Value("int64"))

    def check_labels(self, labels, config, source) -> None:
        super().check_labels(labels, config, source)
        if not any(t != OUTSIDE for tags in labels for t in tags):
            raise DataError(f"{source}: no entity tags after cleaning (every tag is O); token classification needs "
                            "B-TYPE/I-TYPE tags")

    def encode_words(self, tokenizer, tokens_batch, tags_batch, info, max_length: int) -> dict:
        """The model inputs, ``word_ids`` and ``label`` (first-piece tag ids) of word-level tag ids."""
        id2tag = info["labels"]
        tags = None if tags_batch is None else [[id2tag[i] for i in row] for row in tags_batch]
        encoded = encode(tokenizer, tokens_batch, tags, {t: i for i, t in enumerate(id2tag)}, max_length)
        if tags is not None:
            encoded["label"] = encoded.pop("labels")
        return encoded

    def encode(self, splits, info, tokenizer, config, prepared):
        import datasets

        dataset = {}
        for name, part in splits.items():
            tokens, tags = part[TOKENS].tolist(), self.encode_labels(part[TAGS], info)
            encoded = self.encode_words(tokenizer, tokens, tags, info, config.max_seq_length)
            encoded[LENGTH] = [len(ids) for ids in encoded["input_ids"]]
            dataset[name] = datasets.Dataset.from_dict({TOKENS: tokens, TAGS: tags, **encoded})
        return datasets.DatasetDict(dataset)

    def label_distribution(self, stored, info) -> dict:
        """Words per tag (word-level tag ids), in tag order: ``B-X`` counts the ``X`` entities."""
        counts = Counter(info["labels"][i] for tags in stored for i in tags)
        return {tag: counts[tag] for tag in info["labels"]}

    def distribution(self, split, info):
        return self.label_distribution(split[TAGS], info)

    def dataset_stats(self, dataset, info, config, prepared):
        """How many words lost their label to truncation at max_seq_length."""
        words = sum(len(t) for t in prepared.frame[TOKENS])
        labelled = sum(sum(1 for x in row if x != IGNORE) for name in dataset for row in dataset[name]["label"])
        return {"token_length": {"words_cut": words - labelled}}

    # --- model and training -----------------------------------------------------------
    def head(self, info):
        labels = list(info["labels"])
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {t: i for i, t in enumerate(labels)}}

    def wrap_prompt_tuned(self, model):
        from kftune.models.encoder import keep_text_positions

        return keep_text_positions(model)

    def truncate_labels(self, rows, max_length):
        """One label per piece: cut as the pieces are, keeping the closing special token's (-100)."""
        return [r[: max_length - 1] + r[-1:] if len(r) > max_length else r for r in rows]

    def label_array(self, values):
        """Stored labels (ragged, one per piece) as ``[n, longest]`` padded with -100."""
        return _padded(values, IGNORE)

    def label_tensor(self, values, info):
        import torch

        return torch.from_numpy(_padded(values, IGNORE))

    def loss(self, model, batch, config):
        import torch

        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                                                 ignore_index=IGNORE)

    def tag_sequences(self, logits, labels, info) -> tuple[list[list[str]], list[list[str]]]:
        """(true, predicted) tags of the words that ``labels`` label (stored or padded), predicted by ``logits``."""
        labels = self.label_array(labels) if not hasattr(labels, "ndim") or labels.ndim != 2 else labels
        width = min(logits.shape[1], labels.shape[1])
        return tags_from_labels(logits[:, :width], labels[:, :width], info["labels"])

    def trivial_logits(self, logits, info):
        if "O" not in info["labels"]:
            return None
        import numpy as np

        trivial = np.zeros_like(logits)
        trivial[..., info["labels"].index("O")] = 1.0  # no entity
        return trivial

    def scores(self, logits, labels, info, full=False):
        result = scores(*self.tag_sequences(logits, labels, info))
        return result if full else {k: result[k] for k in self.metrics}

    # --- evaluation -------------------------------------------------------------------
    def baselines(self, train, validation, test, info):
        """The most frequent tag per word form in train, on the test words the model is scored on (those that
        kept a labelled first piece within max_seq_length)."""
        id2tag = info["labels"]
        train_tags = [[id2tag[i] for i in row] for row in train[TAGS]]
        kept = [sum(1 for x in row if x != IGNORE) for row in test["label"]]
        test_tokens = [list(t)[:n] for t, n in zip(test[TOKENS], kept, strict=True)]
        test_tags = [[id2tag[i] for i in row][:n] for row, n in zip(test[TAGS], kept, strict=True)]
        predicted = most_frequent_tag_baseline(train[TOKENS], train_tags, test_tokens)
        return {"most_frequent_tag": {**scores(test_tags, predicted), "predictions": predicted}}

    def champion_logits(self, champion, test, same_tokens):
        """Per-piece logits line up with the test split's words only on its own tokens: a champion that tokenizes
        otherwise (another vocabulary or token limit) is not compared."""
        if not same_tokens:
            from kftune.tracking.champion import NotComparable

            raise NotComparable("it tokenizes otherwise than the candidate (vocabulary or max_seq_length), and "
                                "per-word tags are compared on the same word pieces only")
        return super().champion_logits(champion, test, same_tokens)

    def predicted(self, logits, labels, info):
        return self.tag_sequences(logits, labels, info)[1]

    def example_statistics(self, truth, predicted, info):
        """Per test sentence (``truth``: its labels, padded; ``predicted``: the tags of its labelled words): per
        entity type, the true, predicted and correctly predicted entities (seqeval's strict IOB2 entities), and
        the correctly tagged words and all words (:func:`.entities.sentence_statistics`)."""
        return sentence_statistics(label_tags(truth, info["labels"]), predicted, entity_types(info["labels"]))

    def scores_from_sums(self, sums, info):
        """As :func:`~kftune.tasks.token_classification.entities.scores`: entity precision, recall and F1 (micro
        over entities) and token accuracy."""
        return scores_from_counts(sums)

    def report_sections(self, result):
        import numpy as np

        from kftune.reports import figure_html, new_figure, table_html

        model = result["model"]
        names = model["confusion_labels"]
        matrix = np.asarray(model["confusion_matrix"])
        fig, ax = new_figure(4 + 0.4 * len(names), 3.5 + 0.4 * len(names))
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted type (per word)")
        ax.set_ylabel("true type (per word)")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
        base = result["baselines"].get("most_frequent_tag", {}).get("per_class", {})
        rows = [(kind, s["precision"], s["recall"], s["f1"], base.get(kind, {}).get("f1", 0.0), s["support"])
                for kind, s in model["per_class"].items()]
        return ["<h2>Per entity type (strict IOB2)</h2>",
                table_html(["type", "precision", "recall", "f1", "baseline f1", "support"], rows),
                "<h2>Confusion of entity types, per word</h2>", figure_html(fig)]

    # --- export, serving, prediction --------------------------------------------------
    def answers(self, run_batch, tokenizer, inputs, info, max_length, batch_size=32):
        """Each text's entities with character offsets into it as given (``{"entities": [...]}``), and the Open
        Inference output ``entities`` (BYTES ``[n]``, each text's entities as a JSON string)."""
        import numpy as np

        answers = [{"entities": spans} for spans in
                   predict_entities(run_batch, tokenizer, inputs["text"], info["labels"], max_length, batch_size)]
        return answers, [("entities", "BYTES", np.array([json.dumps(a["entities"]) for a in answers], dtype=object))]

    def output_types(self, info):
        return [{"name": "entities", "datatype": "BYTES", "shape": [-1]}]

    def is_empty(self, text):
        return not text.strip()


METRICS = ("precision", "recall", "f1", "accuracy")


TASK = TokenClassification(
    NAME,
    "one IOB2 tag per word (named entities)",
    defaults={"data": TOKEN_DATA, **ENCODER_DEFAULTS, "min_primary_score": 0.0,
              "metric_for_best_model": "f1", "learning_rate": 1e-4,
              "num_train_epochs": 6, "per_device_train_batch_size": 16},
    search_space=encoder_search_space((3e-5, 3e-4)),
    metrics=METRICS,
    primary="f1",
    best_metrics=("f1", "precision", "recall", "accuracy", "loss"),
    baseline="most_frequent_tag",
    trivial="most_frequent_tag",
    settings={"preprocess": (TokenData,)},
)
