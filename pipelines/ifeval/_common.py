"""Helpers shared by the instruction checkers."""

from __future__ import annotations

import functools
import re
from typing import Any

LESS_THAN = "未満"
AT_LEAST = "以上"
RELATIONS = (LESS_THAN, AT_LEAST)

QUOTE_PATTERNS = (re.compile(r"「.*?」"), re.compile(r"『.*?』"))

# ISO 639-1 codes that M-IFEval's ja:language:response_language accepts
# (ja_instructions_util.LANGUAGE_CODES); any other code is a KeyError there.
LANGUAGE_CODES: dict[str, str] = {
    "en": "English",
    "es": "Spanish",
    "pt": "Portuguese",
    "ar": "Arabic",
    "hi": "Hindi",
    "fr": "French",
    "ru": "Russian",
    "de": "German",
    "ja": "Japanese",
    "it": "Italian",
    "bn": "Bengali",
    "uk": "Ukrainian",
    "th": "Thai",
    "ur": "Urdu",
    "ta": "Tamil",
    "te": "Telugu",
    "bg": "Bulgarian",
    "ko": "Korean",
    "pl": "Polish",
    "he": "Hebrew",
    "fa": "Persian",
    "vi": "Vietnamese",
    "ne": "Nepali",
    "sw": "Swahili",
    "kn": "Kannada",
    "mr": "Marathi",
    "gu": "Gujarati",
    "pa": "Punjabi",
    "ml": "Malayalam",
    "fi": "Finnish",
}


def compare(actual: int, relation: str, threshold: int) -> bool:
    """`未満` is strictly less than, anything else (`以上`) is at least."""
    if relation == LESS_THAN:
        return actual < threshold
    return actual >= threshold


def remove_quotes(value: str) -> str:
    """Drop single-line 「…」 and 『…』 spans, as the reference does before sentence checks."""
    for pattern in QUOTE_PATTERNS:
        value = pattern.sub("", value)
    return value


@functools.lru_cache(maxsize=1)
def tokenizer() -> Any:
    """The one janome tokenizer, created on first use (it loads a dictionary)."""
    from janome.tokenizer import Tokenizer

    return Tokenizer()
