"""ja:keywords:* checks (substring based, as in the current M-IFEval ja_instructions)."""

from __future__ import annotations

import collections
import re

from ._common import compare


def existence(value: str, *, keywords: list[str]) -> bool:
    return all(keyword in value for keyword in keywords)


def forbidden_words(value: str, *, forbidden_words: list[str]) -> bool:
    return not any(word and word in value for word in forbidden_words)


def frequency(value: str, *, keyword: str, frequency: int, relation: str) -> bool:
    occurrences = len(re.findall(re.escape(keyword), value))
    return compare(occurrences, relation, frequency)


def letter_frequency(value: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    """Counts the hiragana `letter` together with its katakana twin (code point + 96)."""
    letters = collections.Counter(value)
    total = letters[letter] + letters[chr(ord(letter) + 96)]
    return compare(total, let_relation, let_frequency)
