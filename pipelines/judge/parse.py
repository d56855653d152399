"""Strict reading of the judge's answer line: a grade 1-5, or a winner A / B / tie.

Only the first non-empty line counts, and it must have the asked-for form. Anything else
(no number, two numbers, a range such as 3〜4, a number outside 1-5) is unparsable: recorded
as such, never guessed into a number.
"""

from __future__ import annotations

import re
import unicodedata

_END = r"\s*\**\s*(?:[。.,、]|$)"
_GRADE = re.compile(r"^\**\s*評価\s*:\s*\**\s*([1-5])\s*(?:点|/\s*5)?" + _END)
_WINNER = re.compile(r"^\**\s*勝者\s*:\s*\**\s*(A|B|引き分け|引分け)" + _END)


def _first_line(text: str) -> str:
    for line in unicodedata.normalize("NFKC", text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def parse_grade(text: str) -> int | None:
    """``評価: 4`` (full-width digits and colon too) -> 4; anything else -> None."""
    match = _GRADE.match(_first_line(text))
    return int(match.group(1)) if match else None


def parse_winner(text: str) -> str | None:
    """``勝者: A`` -> ``"A"``, ``勝者: B`` -> ``"B"``, ``勝者: 引き分け`` -> ``"tie"``;
    anything else -> None."""
    match = _WINNER.match(_first_line(text))
    if not match:
        return None
    return match.group(1) if match.group(1) in ("A", "B") else "tie"
