"""Text cleaning that training and serving share: a model must see served text as it saw its training text."""

import html
import re
import unicodedata

_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """NFC-normalise, unescape HTML entities, strip tags and collapse whitespace."""
    text = unicodedata.normalize("NFC", text)
    text = html.unescape(text)
    text = _TAG.sub(" ", text)
    return _SPACE.sub(" ", text).strip()
