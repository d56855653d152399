"""ja:startend:* checks."""

from __future__ import annotations

import re

from ._common import remove_quotes

_MARKERS = "*_`"


def _strip_trailing_markup(value: str) -> str:
    """Drop a trailing run of whitespace and `*`, `_`, backtick if it holds a marker.

    Same result as the reference's `re.sub(r"(?:\\s*(?:\\*\\*|__|\\*|_|`)+\\s*)+$", "", value)`
    without that pattern's exponential backtracking on long runs of `*`.
    """
    end = len(value)
    while end and (value[end - 1] in _MARKERS or value[end - 1].isspace()):
        end -= 1
    if any(char in _MARKERS for char in value[end:]):
        return value[:end]
    return value


def end_checker(value: str, *, end_phrase: str) -> bool:
    """Ignores trailing Markdown emphasis/code markers and closing 」』 on both sides."""
    end_phrase = end_phrase.strip().strip("」』")
    value = _strip_trailing_markup(value.strip())
    return value.strip().strip("」』").endswith(end_phrase)


def sentence_unified_end(value: str, *, ending: str) -> bool:
    """Every piece between 。！？ (single-line quotes removed) must end with `ending`.

    Reference quirk kept: text after the last 。, even a trailing newline, is a piece too.
    """
    pieces = re.split(r"[。！？]", remove_quotes(value))
    return all(not piece or piece.endswith(ending) for piece in pieces)


def quotation(value: str) -> bool:
    value = value.strip()
    return len(value) > 1 and value[0] == "「" and value[-1] == "」"
