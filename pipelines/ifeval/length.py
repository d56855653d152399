"""ja:length_constraints:* checks."""

from __future__ import annotations

import re

from ._common import compare
from .segmenter import count_sentences

_MARKUP_PREFIXES = (
    re.compile(r"^(?:>\s*)+"),
    re.compile(r"^#{1,6}\s*"),
    re.compile(r"^(?:[-*+]\s+|・\s*)"),
    re.compile(r"^\d+[.)]\s+"),
    re.compile(r"^(?:\*\*|__|\*|_|`)+"),
    re.compile(r"^[「『（(《〈]+"),
)


def number_sentences(value: str, *, num_sentences: int, relation: str) -> bool:
    return compare(count_sentences(value), relation, num_sentences)


def number_paragraphs(value: str, *, num_paragraphs: int) -> bool:
    """Paragraphs are separated by `***`; an empty piece is allowed only at either end."""
    paragraphs = re.split(r"\s?\*\*\*\s?", value)
    count = len(paragraphs)
    for index, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if index in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def number_letters(value: str, *, num_letters: int, relation: str) -> bool:
    return compare(len(value), relation, num_letters)


def _strip_markup(text: str) -> str:
    text = text.lstrip().lstrip("\u3000")
    while True:
        previous = text
        for pattern in _MARKUP_PREFIXES:
            text = pattern.sub("", text)
        if text == previous:
            return text


def nth_paragraph_first_word(
    value: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    """Paragraphs are separated by a blank line ("\\n\\n").

    Reference quirk kept: empty paragraphs are left out of the count but not out of the
    indexing, so a response starting with "\\n\\n" fails for nth_paragraph=1.
    """
    paragraphs = re.split(r"\n\n", value)
    count = sum(1 for paragraph in paragraphs if paragraph.strip())
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    paragraph = _strip_markup(paragraph)
    return count == num_paragraphs and paragraph[: len(first_word)] == first_word
