"""Chat formatting and answer normalisation: what preprocess, evaluate, export and serve share for causal LMs.

A conversation is a list of ``{"role", "content"}`` messages (roles ``system``, ``user``,
``assistant``). It becomes text through the model's own chat template where the tokenizer has
one, else through :data:`PLAIN_TEMPLATE`, which the tokenizer is then given (and saved with),
so every later stage renders prompts the same way::

    ### System:            (only if there is a system message)
    {system}

    ### Instruction:
    {user}

    ### Response:
    {assistant}<eos>
"""

from __future__ import annotations

import re
import string

ROLES = ("system", "user", "assistant")

PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}### System:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% else %}### Response:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)
"""The template for a model without one (a documented Alpaca-style layout)."""


def ensure_chat_template(tokenizer) -> bool:
    """Give ``tokenizer`` :data:`PLAIN_TEMPLATE` unless it has a chat template; True if it had one."""
    if getattr(tokenizer, "chat_template", None):
        return True
    tokenizer.chat_template = PLAIN_TEMPLATE
    return False


def render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    """The conversation as the model sees it (``generation_prompt``: ending where the assistant speaks)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


_PUNCTUATION = string.punctuation + "“”‘’«»…"
_SPACES = re.compile(r"\s+")


def normalise_answer(text: str) -> str:
    """What exact match compares: case folded, surrounding whitespace and punctuation stripped,
    inner whitespace collapsed ("  Positive.\\n" -> "positive")."""
    return _SPACES.sub(" ", text.casefold()).strip().strip(_PUNCTUATION).strip()


def read_answer(generation: str, answers: list[str]) -> str:
    """The first allowed answer the generation names as a word or words (normalised; at one position, the longest
    that fits), or "" if it names none: "Positive!" and "The review is positive." both read "positive",
    "positively" reads nothing. Lenient on purpose: a base model that states its answer after a preamble answered,
    and one definition serves every model compared."""
    text = normalise_answer(generation)
    found = []
    for answer in answers:
        match = re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text)
        if match:
            found.append((match.start(), -len(answer), answer))
    return min(found)[2] if found else ""
