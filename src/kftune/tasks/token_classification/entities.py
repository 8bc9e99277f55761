"""Token-classification answers: scoring tags (seqeval, strict IOB2), the most-frequent-tag baseline, and
entity spans with character offsets into raw texts (serving, prediction).

- Evaluation: :func:`scores` (entity-level precision/recall/F1 overall and per type; token
  accuracy; a token-level confusion matrix of entity types), :func:`most_frequent_tag_baseline`, and
  :func:`sentence_statistics` / :func:`scores_from_counts` (the same scores from per-sentence counts, for the
  paired bootstrap).
- Serving: :func:`text_words`, :func:`word_predictions`, :func:`entity_spans` and
  :func:`predict_entities` (entity spans in the shape of transformers' token-classification
  pipeline with aggregation: ``entity_group``, ``score``, ``word``, ``start``, ``end``).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

from kftune.tasks.token_classification.data import IGNORE, OUTSIDE, encode, entity_type, repair_iob2

# ---------------------------------------------------------------------------------------------
# Evaluation


def scores(true_tag_seqs, pred_tag_seqs) -> dict:
    """Entity-level precision, recall and F1 (micro over entities; seqeval, strict IOB2: an
    entity counts only with the right type and exact boundaries) overall and per entity type,
    token accuracy, and a token-level confusion matrix of entity types (``O`` first, then the
    types in sorted order; rows true, columns predicted).

    Returns ``{"precision", "recall", "f1", "accuracy", "per_class": {type: {"precision",
    "recall", "f1", "support"}}, "confusion_labels": [...], "confusion_matrix": [[...]]}``.
    """
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2
    from sklearn.metrics import confusion_matrix

    true = [list(t) for t in true_tag_seqs]
    pred = [list(p) for p in pred_tag_seqs]
    for i, (t, p) in enumerate(zip(true, pred, strict=True)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: {len(t)} true tags but {len(p)} predicted")
    strict = dict(mode="strict", scheme=IOB2, zero_division=0)
    report = classification_report(true, pred, output_dict=True, **strict)
    types = entity_types(t for seq in true + pred for t in seq)
    per_class = {}
    for kind in types:
        row = report.get(kind, {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
        per_class[kind] = {"precision": float(row["precision"]), "recall": float(row["recall"]),
                           "f1": float(row["f1-score"]), "support": int(row["support"])}
    labels = [OUTSIDE] + types
    flat_true = [entity_type(t) for seq in true for t in seq]
    flat_pred = [entity_type(t) for seq in pred for t in seq]
    return {
        "precision": float(precision_score(true, pred, **strict)),
        "recall": float(recall_score(true, pred, **strict)),
        "f1": float(f1_score(true, pred, **strict)),
        "accuracy": float(accuracy_score(true, pred)),
        "per_class": per_class,
        "confusion_labels": labels,
        "confusion_matrix": confusion_matrix(flat_true, flat_pred, labels=labels).tolist(),
    }


def sentence_statistics(true_tag_seqs, pred_tag_seqs, types) -> dict:
    """Per sentence, the counts that :func:`scores`' entity precision, recall and F1 and its token accuracy follow
    from: per entity type (``types``, in order; columns) the true entities, the predicted ones and the correctly
    predicted ones (``tp``: the same type and exact boundaries, seqeval's strict IOB2 entities), and the correctly
    tagged words and all words (arrays, the sentences on axis 0)."""
    import numpy as np
    from seqeval.scheme import IOB2, Entities

    true = [list(t) for t in true_tag_seqs]
    pred = [list(p) for p in pred_tag_seqs]
    column = {kind: j for j, kind in enumerate(types)}
    counts = {name: np.zeros((len(true), len(types))) for name in ("true", "pred", "tp")}
    words, correct = np.zeros(len(true)), np.zeros(len(true))
    for i, (t, p, true_entities, pred_entities) in enumerate(zip(
            true, pred, Entities(true, IOB2).entities, Entities(pred, IOB2).entities, strict=True)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: {len(t)} true tags but {len(p)} predicted")
        for name, entities in (("true", true_entities), ("pred", pred_entities),
                               ("tp", set(true_entities) & set(pred_entities))):
            for entity in entities:
                counts[name][i, column[entity.tag]] += 1
        words[i], correct[i] = len(t), sum(a == b for a, b in zip(t, p, strict=True))
    return {**counts, "correct_words": correct, "words": words}


def scores_from_counts(sums: dict) -> dict:
    """:func:`scores`' ``precision``, ``recall``, ``f1`` (micro over entities) and ``accuracy`` from the sums of
    :func:`sentence_statistics` over any set of sentences (arrays: the last axis the entity types), computed as
    seqeval does (0 where undefined)."""
    from kftune.tasks.bootstrap import ratio

    tp, true, pred = sums["tp"].sum(-1), sums["true"].sum(-1), sums["pred"].sum(-1)
    precision, recall = ratio(tp, pred), ratio(tp, true)
    return {"precision": precision, "recall": recall, "f1": ratio(2 * precision * recall, precision + recall),
            "accuracy": ratio(sums["correct_words"], sums["words"])}


def entity_types(tags) -> list[str]:
    """The entity types of a tag set, sorted (``PER`` for ``B-PER`` and ``I-PER``)."""
    return sorted({entity_type(t) for t in tags} - {OUTSIDE})


def label_tags(labels, id2tag) -> list[list[str]]:
    """Per row of :func:`encode` labels (``[batch, pieces]``, -100 where a piece is not a word's first), the tags
    of its words."""
    import numpy as np

    return [[id2tag[int(i)] for i in row[row != IGNORE]] for row in np.asarray(labels)]


def tags_from_labels(logits, labels, id2tag) -> tuple[list[list[str]], list[list[str]]]:
    """(true, predicted) tag sequences from a batch of piece logits ``[batch, pieces, num_tags]``
    and its :func:`encode` labels (the first pieces of words carry a label, the rest -100): for
    the training loop's validation, which has labels but no word ids. Predictions are made
    valid IOB2 with :func:`repair_iob2`, as at evaluation."""
    import numpy as np

    logits, labels = np.asarray(logits), np.asarray(labels)
    predicted_ids = logits.argmax(-1)
    pred = [repair_iob2([id2tag[int(i)] for i in row_pred[row_labels != IGNORE]])[0]
            for row_labels, row_pred in zip(labels, predicted_ids, strict=True)]
    return label_tags(labels, id2tag), pred


def most_frequent_tag_baseline(train_tokens, train_tags, test_tokens) -> list[list[str]]:
    """Tag each test word with the tag it has most often in train (exact word form; ties go to
    the alphabetically first tag); words not seen in train get ``O``. The sequences are then
    made valid IOB2 with :func:`repair_iob2` (a word mostly tagged ``I-X`` that does not follow
    an ``X`` entity starts one: ``B-X``), as model predictions are, so both are scored alike."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for tokens, tags in zip(train_tokens, train_tags, strict=True):
        for token, tag in zip(tokens, tags, strict=True):
            counts[token][tag] += 1
    best = {token: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for token, c in counts.items()}
    return [repair_iob2([best.get(token, OUTSIDE) for token in tokens])[0] for tokens in test_tokens]


# ---------------------------------------------------------------------------------------------
# Decoding (predict, serve)


def word_predictions(logits, word_ids, id2tag, num_words: int | None = None) -> tuple[list[str], list[float]]:
    """Per word: the tag predicted on its first word piece and its softmax probability.

    ``logits``: ``[pieces, num_tags]`` for one example; ``word_ids``: the word of each piece
    (None or -1 for special tokens); ``id2tag``: tag per id (list or dict). Words past the last
    piece (cut by truncation) up to ``num_words`` get ``O`` with score 0.0. The tags are as
    predicted (possibly a stray ``I-``); :func:`repair_iob2` makes them valid IOB2."""
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    first: dict[int, int] = {}
    for piece, w in enumerate(word_ids):
        if w is not None and w >= 0 and w not in first:
            first[int(w)] = piece
    n = max(first, default=-1) + 1 if num_words is None else num_words
    tags, word_scores = [], []
    for w in range(n):
        if w not in first:
            tags.append(OUTSIDE)
            word_scores.append(0.0)
            continue
        best = int(probs[first[w]].argmax())
        tags.append(id2tag[best])
        word_scores.append(float(probs[first[w], best]))
    return tags, word_scores


def text_words(tokenizer, text: str) -> list[tuple[str, int, int]]:
    """Split raw text into words as the tokenizer's pre-tokenizer does (whitespace and, for
    BERT-like tokenizers, punctuation): ``(word, start, end)`` with character offsets into
    ``text``. Tokenizers without one fall back to runs of word characters and single symbols."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = backend.pre_tokenizer if backend is not None else None
    if pre is None:
        return [(m.group(), m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", text)]
    words = []
    for _, (start, end) in pre.pre_tokenize_str(text):
        piece = text[start:end]
        stripped = piece.strip()  # byte-level BPE keeps the leading space in the word
        if not stripped:
            continue
        start += len(piece) - len(piece.lstrip())
        words.append((stripped, start, start + len(stripped)))
    return words


def entity_spans(text: str, word_spans, tags, word_scores) -> list[dict]:
    """Group per-word IOB2 tags into entities with character offsets into ``text``.

    ``word_spans``: ``(start, end)`` (or ``(word, start, end)``) per word; ``tags`` and
    ``word_scores`` per word. An entity starts at ``B-X``, or at an ``I-X`` that does not
    continue an ``X`` entity, and runs over the following ``I-X``. Returns, in text order,
    ``{"entity_group": X, "score": mean of its words' scores, "word": text[start:end],
    "start", "end"}`` (the shape of transformers' token-classification pipeline with
    aggregation)."""
    spans = [s[-2:] for s in word_spans]
    entities: list[dict] = []
    current: dict | None = None
    for (start, end), tag, score in zip(spans, tags, word_scores, strict=True):
        kind = entity_type(tag)
        if tag.startswith("I-") and current is not None and current["entity_group"] == kind:
            current["end"] = end
            current["_scores"].append(score)
            continue
        current = None
        if kind != OUTSIDE:
            current = {"entity_group": kind, "start": start, "end": end, "_scores": [score]}
            entities.append(current)
    return [{"entity_group": e["entity_group"], "score": float(sum(e["_scores"]) / len(e["_scores"])),
             "word": text[e["start"]:e["end"]], "start": int(e["start"]), "end": int(e["end"])}
            for e in entities]


ONNX_LOGITS_AXES = {0: "batch", 1: "sequence"}
"""Dynamic axes of the exported graph's ``logits`` output: one row of tag scores per word piece."""


class _Encoded:
    """:func:`encode` output shaped like a ``datasets`` split (for ``inference.padded_batches``)."""

    def __init__(self, encoded: dict):
        from kftune.inference.runners import MODEL_INPUTS

        self._columns = {name: encoded[name] for name in MODEL_INPUTS if name in encoded}
        self.column_names = list(self._columns)

    def __getitem__(self, name: str):
        return self._columns[name]

    def __len__(self) -> int:
        return len(self._columns["input_ids"])


def piece_logits(run_batch, encoded: dict, batch_size: int = 32, pad_id: int = 0) -> list:
    """Per example, the logits of its word pieces (``[pieces, num_tags]``, padding cut off), in
    ``encoded``'s order. ``run_batch``: {input: int64 array [batch, width]} -> logits
    ``[batch, width, num_tags]`` (:func:`~kftune.inference.runners.torch_runner` or
    :func:`~kftune.inference.runners.onnx_runner`); batches are run in length order."""
    import numpy as np

    from kftune.inference.runners import padded_batches

    split = _Encoded(encoded)
    out: list = [None] * len(split)
    for indices, arrays in padded_batches(split, batch_size, pad_id):
        logits = np.asarray(run_batch(arrays), dtype=np.float32)
        for row, i in enumerate(indices):
            out[i] = logits[row, : len(split["input_ids"][i])]
    return out


def predict_word_tags(run_batch, encoded: dict, num_words: list[int], id2tag, batch_size: int = 32,
                      pad_id: int = 0) -> tuple[list[list[str]], list[list[float]]]:
    """Tags (made valid IOB2 by :func:`repair_iob2`) and scores per word of each encoded sentence."""
    tags, word_scores = [], []
    for logits, word_ids, n in zip(piece_logits(run_batch, encoded, batch_size, pad_id), encoded["word_ids"],
                                   num_words, strict=True):
        t, s = word_predictions(logits, word_ids, id2tag, num_words=n)
        tags.append(repair_iob2(t)[0])
        word_scores.append(s)
    return tags, word_scores


def logits_parity(reference: list, other: list, word_ids: list) -> dict:
    """How far two runs' :func:`piece_logits` are apart: the largest absolute difference over
    all pieces, and the number of words whose first-piece tag differs (the export's parity check)."""
    import numpy as np

    max_diff, mismatched, words = 0.0, 0, 0
    for a, b, ids in zip(reference, other, word_ids, strict=True):
        max_diff = max(max_diff, float(np.abs(np.asarray(a) - np.asarray(b)).max(initial=0.0)))
        first = [p for p, w in enumerate(ids) if w is not None and w >= 0 and (p == 0 or ids[p - 1] != w)]
        words += len(first)
        mismatched += int((np.asarray(a)[first].argmax(-1) != np.asarray(b)[first].argmax(-1)).sum()) if first else 0
    return {"max_abs_diff": max_diff, "mismatched_words": mismatched, "words": words}


def predict_entities(run_batch, tokenizer, texts: list[str], id2tag, max_length: int, batch_size: int = 32) -> list:
    """Entity spans (:func:`entity_spans`) for each raw text: words from :func:`text_words`,
    encoded as at training, run through ``run_batch`` (as for :func:`piece_logits`: a PyTorch
    model or an ONNX Runtime session behind it). An empty text has no entities."""
    words = [text_words(tokenizer, t) for t in texts]
    present = [i for i, ws in enumerate(words) if ws]
    results: list[list[dict]] = [[] for _ in texts]
    if not present:
        return results
    encoded = encode(tokenizer, [[w for w, _, _ in words[i]] for i in present], None, None, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tags, word_scores = predict_word_tags(run_batch, encoded, [len(words[i]) for i in present], id2tag,
                                          batch_size, pad_id)
    for i, t, s in zip(present, tags, word_scores, strict=True):
        results[i] = entity_spans(texts[i], words[i], t, s)
    return results
