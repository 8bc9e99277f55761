"""Tiny synthetic data sets for the tasks beyond classification, shared by the test modules, and writers that put
them in the files a user would give ``--data``.

Regression and multilabel are cue texts (tests/test_learning.py): a few neutral words around cue words whose
presence decides the target, so a model that scores better than the baselines' floor on held-out texts has learnt
something. Regression: the target is the sum of the cues' values plus a small jitter. Multilabel: each cue group
present is a label. Token classification: two sentence templates with a person and a place.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

NEUTRAL = ("the", "film", "plot", "actor", "scene", "story", "was", "and", "its", "with", "a", "of")
CUES = {"music": ("song", "melody", "score"), "acting": ("actor", "performance", "cast"),
        "violence": ("gun", "fight", "blood")}
VALUES = {"wonderful": 2.0, "superb": 1.5, "good": 0.7, "dull": -0.8, "awful": -1.7, "dreadful": -2.2}


def regression_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    texts = {}
    while len(texts) < rows:
        cues = rng.sample(sorted(VALUES), rng.randint(1, 2))
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(4, 8))]
        for cue in cues:
            words.insert(rng.randint(0, len(words)), cue)
        texts.setdefault(" ".join(words), round(sum(VALUES[c] for c in cues) + rng.uniform(-0.2, 0.2), 3))
    return pd.DataFrame({"text": list(texts), "label": list(texts.values())})


def multilabel_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    texts = {}
    while len(texts) < rows:
        groups = [g for g in CUES if rng.random() < 0.45]
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(4, 8))]
        for group in groups:
            words.insert(rng.randint(0, len(words)), rng.choice(CUES[group]))
        texts.setdefault(" ".join(words), groups)
    return pd.DataFrame({"text": list(texts), "label": [json.dumps(v) for v in texts.values()]})


def toy_sentences(n: int, seed: int = 0, ambiguous: bool = False):
    """Two templates; with ``ambiguous`` the same words are people in one and places in the other, so only the
    context tells (the most-frequent-tag baseline cannot)."""
    rng = random.Random(seed)
    people, places = ["Ada", "Alan", "Grace", "Linus"], ["Paris", "Rome", "Oslo", "Lima"]
    if ambiguous:
        people = places = ["Jordan", "Georgia", "Austin", "Florence", "Paris", "Chelsea"]
    sentences = []
    for _ in range(n):
        person, place = rng.choice(people), rng.choice(places)
        if rng.random() < 0.5:
            sentences.append(([person, "Smith", "lives", "in", place], ["B-PER", "I-PER", "O", "O", "B-LOC"]))
        else:
            sentences.append((["We", "met", person, "near", place, "today"], ["O", "O", "B-PER", "O", "B-LOC", "O"]))
    return [s[0] for s in sentences], [s[1] for s in sentences]


def distinct_toy_sentences(n: int, seed: int = 1):
    """``n`` ambiguous toy sentences, each ending in its own word so that none is dropped as a duplicate."""
    tokens, tags = toy_sentences(n, seed=seed, ambiguous=True)
    return [ws + [f"x{i}"] for i, ws in enumerate(tokens)], [ts + ["O"] for ts in tags]


def write_conll(path, tokens, tags):
    path.write_text("-DOCSTART- O\n\n" + "\n\n".join("\n".join(f"{w} {t}" for w, t in zip(ws, ts, strict=True))
                                                   for ws, ts in zip(tokens, tags, strict=True)) + "\n",
                    encoding="utf-8")
    return path


def write_regression_csv(path: Path, rows: int, seed: int = 0) -> Path:
    regression_frame(rows, seed).to_csv(path, index=False)
    return path


def write_multilabel_jsonl(path: Path, rows: int, seed: int = 0) -> Path:
    """Labels as JSON lists, one object a line."""
    frame = multilabel_frame(rows, seed)
    frame.assign(label=[json.loads(v) for v in frame["label"]]).to_json(path, orient="records", lines=True)
    return path


def write_token_conll(path: Path, sentences: int, seed: int = 1) -> Path:
    return write_conll(path, *distinct_toy_sentences(sentences, seed))


TASK_DATA = {"regression": ("scores.csv", write_regression_csv), "multilabel": ("tags.jsonl", write_multilabel_jsonl),
             "token-classification": ("people.conll", write_token_conll)}
"""Per task: the data file's name, and the function that writes ``rows`` of that task's data there."""


def write_task_data(task: str, directory: Path, rows: int) -> Path:
    name, write = TASK_DATA[task]
    return write(directory / name, rows)
