"""Preference data: read, recognise the form, clean, tokenize both responses with response-only labels.

Each row holds ``prompt``, ``chosen`` and ``rejected``, in one of TRL's two forms (decided per file, from the
first row's ``chosen``):

- standard: three strings; the prompt becomes the user's message, each response the assistant's answer;
- conversational: three lists of ``{"role", "content"}`` messages (in CSV, JSON text); the prompt is the
  conversation before the answer, ``chosen`` and ``rejected`` the assistant turn(s) that follow it, each ending
  with an assistant message.

Each side, prompt + response, is rendered with the model's chat template (as the causal-lm task renders a
conversation) and tokenized; its labels are the response's tokens alone (the prompt's are -100), so a side's
log-probability is summed over the response. Cleaning counts what it drops: pairs with nothing asked
(``empty_example``), pairs whose responses are the same (``identical_pair``: nothing to prefer), exact duplicates
and pairs with a side longer than ``max_seq_length`` tokens (``too_long``). Malformed input (a missing column, a
missing side, a message list that is not one, a side that does not end with the assistant) is an error naming the
file, the row (numbered from 1) and what was expected, as for instruction data.
"""

from __future__ import annotations

import json

import numpy as np

from kftune.data.chat import ROLES, render
from kftune.errors import DataError
from kftune.tasks.causal_lm.data import encode

COLUMNS = ("prompt", "chosen", "rejected")
SIDES = ("chosen", "rejected")
RULES = ("empty_example", "identical_pair", "exact_duplicate", "too_long")
STANDARD, CONVERSATIONAL = "standard", "conversational"

# Split columns of a dpo dataset artifact (input_ids/labels: the chosen side, so that what reads a causal-LM split,
# export's parity check, reads the chosen conversation)
PROMPT = "prompt"  # rendered up to where the assistant answers
PROMPT_MESSAGES = "prompt_messages"  # the prompt's messages, as JSON
CHOSEN, REJECTED = "chosen", "rejected"  # the responses' text (their last assistant turn)
REJECTED_IDS, REJECTED_LABELS = "rejected_input_ids", "rejected_labels"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _as_list(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def detect_form(frame, source: str) -> str:
    """``conversational`` when the first row's ``chosen`` is a list of messages (or its JSON), else ``standard``."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: preference data needs the columns prompt, chosen and rejected; missing "
                        f"{', '.join(missing)} (the columns are: {', '.join(map(str, frame.columns)) or 'none'})")
    if not len(frame):
        raise DataError(f"{source}: no rows")
    return CONVERSATIONAL if isinstance(_as_list(frame["chosen"].iloc[0]), list) else STANDARD


def _messages(value, column: str, source: str, row: int, response: bool) -> list[dict]:
    value = _as_list(value)
    if not isinstance(value, list) or (response and not value):
        raise DataError(f"{source}: row {row}: {column} must be a list of {{role, content}} messages (the "
                        f"conversational form, as the first row's chosen), got {str(value)[:80]!r}")
    messages = []
    for turn in value:
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise DataError(f"{source}: row {row}: each message of {column} needs a role and a content, got "
                            f"{turn!r:.80}")
        if str(turn["role"]) not in ROLES:
            raise DataError(f"{source}: row {row}: {column}: unknown role {turn['role']!r}; expected one of "
                            f"{', '.join(ROLES)}")
        content = "" if _missing(turn["content"]) else str(turn["content"]).strip()
        messages.append({"role": str(turn["role"]), "content": content})
    if response and messages[-1]["role"] != "assistant":
        raise DataError(f"{source}: row {row}: {column} ends with a {messages[-1]['role']} message; expected the "
                        "assistant's answer last")
    return messages


def pairs(frame, form: str, source: str) -> list[tuple[list[dict], list[dict], list[dict]]]:
    """(prompt, chosen, rejected) messages per row (rows numbered from 1 in errors, as in the file)."""
    out = []
    for i, row in enumerate(frame[list(COLUMNS)].to_dict("records"), start=1):
        for side in SIDES:
            value = row[side]
            if _missing(value) or (isinstance(value, str) and not value.strip()) or (
                    not isinstance(value, str) and hasattr(value, "__len__") and not len(value)):
                raise DataError(f"{source}: row {i}: no {side} response; expected the {side} answer to the prompt")
        if form == STANDARD:
            prompt = "" if _missing(row["prompt"]) else str(row["prompt"]).strip()
            sides = [[{"role": "assistant", "content": str(row[side]).strip()}] for side in SIDES]
            out.append(([{"role": "user", "content": prompt}], *sides))
        else:
            prompt = [] if _missing(row["prompt"]) else _messages(row["prompt"], "prompt", source, i, response=False)
            sides = [_messages(row[side], side, source, i, response=True) for side in SIDES]
            for side, messages in zip(SIDES, sides, strict=True):
                if not messages[-1]["content"]:
                    raise DataError(f"{source}: row {i}: the {side} answer is empty; expected the {side} answer to "
                                    "the prompt")
            out.append((prompt, *sides))
    return out


def clean_and_encode(rows: list[tuple], tokenizer, max_length: int, source: str):
    """Drop (and count, by :data:`RULES`) pairs with nothing asked, identical responses, duplicates and overlong
    sides; encode the rest: (a DataFrame of the split columns, removed per rule)."""
    import pandas as pd

    removed = dict.fromkeys(RULES, 0)
    seen = set()
    out = []
    for prompt, chosen, rejected in rows:
        if not any(m["content"] for m in prompt):
            removed["empty_example"] += 1
            continue
        if chosen == rejected:
            removed["identical_pair"] += 1
            continue
        key = json.dumps([prompt, chosen, rejected], sort_keys=True)
        if key in seen:
            removed["exact_duplicate"] += 1
            continue
        seen.add(key)
        chosen_ids, chosen_labels = encode(tokenizer, prompt + chosen, labelled_from=len(prompt))
        rejected_ids, rejected_labels = encode(tokenizer, prompt + rejected, labelled_from=len(prompt))
        if max(len(chosen_ids), len(rejected_ids)) > max_length:
            removed["too_long"] += 1
            continue
        out.append({
            PROMPT: render(tokenizer, prompt, generation_prompt=True),
            PROMPT_MESSAGES: json.dumps(prompt, ensure_ascii=False),
            CHOSEN: chosen[-1]["content"],
            REJECTED: rejected[-1]["content"],
            "input_ids": chosen_ids,
            "labels": chosen_labels,
            REJECTED_IDS: rejected_ids,
            REJECTED_LABELS: rejected_labels,
            "length": max(len(chosen_ids), len(rejected_ids)),
            "completion_length": sum(1 for x in chosen_labels if x != -100),
        })
    if not out:
        reasons = ", ".join(f"{n} {rule}" for rule, n in removed.items() if n)
        raise DataError(f"{source}: no preference pairs left after cleaning ({reasons})")
    return pd.DataFrame(out), removed
