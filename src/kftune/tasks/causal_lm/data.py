"""Instruction data of a causal LM: read, recognise, clean, tokenize with completion-only labels.

Three layouts are recognised (``instruction_format=auto`` picks the first whose columns are
all present, in this order), each turned into a conversation of ``{role, content}`` messages:

- ``messages``: a column ``messages`` holding a list of ``{"role", "content"}`` (roles
  ``system``, ``user``, ``assistant``), ending with the assistant's turn;
- ``alpaca``: ``instruction``, ``input`` (may be empty) and ``output``; the user says the
  instruction, then a blank line and the input;
- ``prompt-completion``: ``prompt`` and ``completion``.

The conversation is rendered with the model's chat template (or the documented plain one,
:mod:`kftune.data.chat`); the tokens of every assistant turn are the training
targets (``labels``), all others are masked (-100). Cleaning counts what it drops: examples
with nothing to learn or nothing to ask (``empty_example``), exact duplicates, and examples
longer than ``max_seq_length`` tokens (``too_long``), unless ``overlong=truncate_prompt``,
which shortens the last user message from its end until the example fits. Malformed input (no
recognisable columns, a role kftune does not know, an empty completion, a conversation that
does not end with the assistant) is an error naming the file and row.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from kftune.data.chat import ROLES, normalise_answer, render
from kftune.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

LAYOUTS = {
    "messages": ("messages",),
    "alpaca": ("instruction", "input", "output"),
    "prompt-completion": ("prompt", "completion"),
}
ANSWER_SET_MAX = 20
"""Data whose completions take at most this many distinct (normalised, short) values is short-answer
data: evaluation then also reads the answer from the start of each generation."""

RULES = ("empty_example", "exact_duplicate", "too_long")
INSTRUCTION_COLUMNS = ("prompt", "completion", "messages", "instruction", "output")
"""Columns that tell instruction data (task auto)."""


@dataclass
class Instructions:
    """Instruction data."""

    instruction_format: Literal["auto", "prompt-completion", "alpaca", "messages"] = "auto"
    """Columns of instruction data: prompt + completion, instruction + input + output (alpaca), or messages (a list of {role, content}); auto: the first whose columns are there."""  # noqa: E501
    overlong: Literal["drop", "truncate_prompt"] = "drop"
    """Examples longer than max_seq_length tokens: drop them (counted in the data report), or truncate_prompt: cut the last user message from its end until they fit."""  # noqa: E501

# Split columns of a causal-lm dataset artifact
MESSAGES = "messages"  # the conversation, as JSON
PROMPT = "prompt"  # rendered up to where the (last) assistant turn starts
REFERENCE = "reference"  # the last assistant turn: what evaluation compares generations with
LABELS = "labels"


def detect_layout(frame: pd.DataFrame, layout: str, source: str) -> str:
    if layout != "auto":
        missing = [c for c in LAYOUTS[layout] if c not in frame.columns]
        if missing:
            raise DataError(f"{source}: instruction_format {layout} needs the column {missing[0]!r}; "
                            f"the columns are: {', '.join(map(str, frame.columns)) or '(none)'}")
        return layout
    for name, columns in LAYOUTS.items():
        if all(c in frame.columns for c in columns) or (name == "alpaca" and {"instruction", "output"} <= set(frame)):
            return name
    raise DataError(
        f"{source}: no recognisable instruction columns (found: {', '.join(map(str, frame.columns)) or 'none'}); "
        "expected prompt + completion, instruction + input + output (Alpaca) or messages (a list of {role, content})"
    )


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _messages_of(value, source: str, row: int) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"{source}: row {row}: messages is not a JSON list ({e.msg})") from e
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise DataError(f"{source}: row {row}: messages must be a non-empty list of {{role, content}} objects")
    messages = []
    for turn in value:
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise DataError(f"{source}: row {row}: each message needs a role and a content, got {turn!r:.80}")
        role = str(turn["role"])
        if role not in ROLES:
            raise DataError(f"{source}: row {row}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        messages.append({"role": role, "content": _text(turn["content"])})
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{source}: row {row}: the conversation ends with a {messages[-1]['role']} message; "
                        "expected the assistant's answer last")
    return messages


def conversations(frame: pd.DataFrame, layout: str, source: str) -> list[list[dict]]:
    """One conversation per row (rows numbered from 1 in errors, as in the file)."""
    out = []
    for i, row in enumerate(frame.to_dict("records"), start=1):
        if layout == "messages":
            messages = _messages_of(row["messages"], source, i)
        elif layout == "alpaca":
            user = _text(row["instruction"]).strip()
            extra = _text(row.get("input")).strip()
            messages = [{"role": "user", "content": f"{user}\n\n{extra}" if extra else user},
                        {"role": "assistant", "content": _text(row["output"])}]
        else:
            messages = [{"role": "user", "content": _text(row["prompt"])},
                        {"role": "assistant", "content": _text(row["completion"])}]
        messages = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
        asked = any(m["content"] for m in messages if m["role"] != "assistant")
        if asked and not messages[-1]["content"]:
            column = {"messages": "messages", "alpaca": "output"}.get(layout, "completion")
            raise DataError(f"{source}: row {i}: empty completion ({column}); expected the answer to train on")
        out.append(messages)
    return out


def encode(tokenizer, messages: list[dict], last_turn_only: bool = False,
           labelled_from: int = 0) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and its labels (the ids on assistant turns, or with
    ``last_turn_only`` on the last one alone, as a few-shot prompt's answer is scored, or those from message
    ``labelled_from`` on, as a preference pair's response is scored after its prompt; -100 elsewhere).

    The assistant turns' character spans come from rendering prefixes of the conversation, which
    a chat template must reproduce as prefixes of the whole (ChatML, Llama's and the plain
    template do); the whole is tokenized once, and a token is a target when it starts inside one
    of those spans."""
    text = render(tokenizer, messages)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant" or k < labelled_from:
            continue
        head = render(tokenizer, messages[:k], generation_prompt=True) if k else ""
        through = render(tokenizer, messages[: k + 1])
        if not (text.startswith(through) and through.startswith(head)):
            raise DataError("the chat template does not render a conversation's prefix as a prefix of it; "
                            "kftune cannot tell the assistant's tokens apart")
        spans.append((len(head), len(through)))
    if last_turn_only:
        spans = spans[-1:]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    labels = [t if any(start <= begin < end for start, end in spans) else -100
              for t, (begin, _) in zip(ids, encoded["offset_mapping"], strict=True)]
    return ids, labels


def _truncate_prompt(tokenizer, messages: list[dict], budget: int) -> list[dict] | None:
    """``messages`` with the last user message cut from its end until the example fits ``budget`` tokens."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        return None
    last = users[-1]
    words = tokenizer(messages[last]["content"], add_special_tokens=False)["input_ids"]
    over = len(encode(tokenizer, messages)[0]) - budget
    while over > 0 and words:
        words = words[: max(0, len(words) - over - 2)]
        trial = [dict(m) for m in messages]
        trial[last]["content"] = tokenizer.decode(words).strip()
        over = len(encode(tokenizer, trial)[0]) - budget
        if over <= 0:
            return trial
    return None


def clean_and_encode(conversations_: list[list[dict]], tokenizer, max_length: int, overlong: str,
                     source: str) -> tuple[pd.DataFrame, dict]:
    """Drop (and count) empty, duplicate and overlong examples; encode the rest."""
    removed = dict.fromkeys(RULES, 0)
    truncated = 0
    seen = set()
    rows = []
    for messages in conversations_:
        if not messages[-1]["content"] or not any(m["content"] for m in messages[:-1]):
            removed["empty_example"] += 1
            continue
        key = json.dumps(messages, sort_keys=True)
        if key in seen:
            removed["exact_duplicate"] += 1
            continue
        seen.add(key)
        ids, labels = encode(tokenizer, messages)
        if len(ids) > max_length:
            shorter = _truncate_prompt(tokenizer, messages, max_length) if overlong == "truncate_prompt" else None
            if shorter is None:
                removed["too_long"] += 1
                continue
            messages, truncated = shorter, truncated + 1
            ids, labels = encode(tokenizer, messages)
        rows.append({
            MESSAGES: json.dumps(messages, ensure_ascii=False),
            PROMPT: render(tokenizer, messages[:-1], generation_prompt=True),
            REFERENCE: messages[-1]["content"],
            "input_ids": ids,
            LABELS: labels,
            "length": len(ids),
            "completion_length": sum(1 for x in labels if x != -100),
        })
    if not rows:
        reasons = ", ".join(f"{n} {rule}" for rule, n in removed.items() if n)
        kept_out = removed["empty_example"] + removed["exact_duplicate"]
        all_too_long = removed["too_long"] == len(conversations_) - kept_out
        hint = (f" (every example is longer than max_seq_length={max_length} tokens: raise it, or set "
                "overlong=truncate_prompt)") if removed["too_long"] and all_too_long else ""
        raise DataError(f"{source}: no examples left after cleaning ({reasons}){hint}")
    import pandas as pd

    return pd.DataFrame(rows), removed | {"prompt_truncated": truncated}


def answer_set(references: list[str]) -> list[str]:
    """The allowed answers of short-answer data (normalised, sorted), or [] for free-form completions."""
    counts = Counter(normalise_answer(r) for r in references)
    if len(counts) > ANSWER_SET_MAX or any(len(a.split()) > 5 or not a for a in counts):
        return []
    if len(counts) < 2 or min(counts.values()) < 3:
        return []
    return sorted(counts)


def read_instructions(config, frame: pd.DataFrame | None = None) -> tuple[pd.DataFrame, str]:
    """(every column of the instruction data, what was read): the bundled instructions, ``frame`` (already read
    from ``config.data``) or ``config.data`` itself."""
    from kftune.data.bundled import INSTRUCTION_DATA
    from kftune.data.files import read_frame
    from kftune.data.labelled import read_bundled_instructions

    if config.data == INSTRUCTION_DATA:
        return read_bundled_instructions(), config.data
    if frame is not None:
        return frame, config.data
    return read_frame(config.data, config.data_format)
