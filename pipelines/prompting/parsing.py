"""Turning a raw generation into an answer: named steps, applied in order."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence

from promptsearch.pipelines.errors import UserError

_PREFIX = re.compile(r"^\s*(?:回答|答え|解答|応答|要約|要点|A|Answer)\s*[:：]\s*", re.IGNORECASE)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _until_period(text: str) -> str:
    return text.split("。", 1)[0].strip()


def _strip_quotes(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and (text[0], text[-1]) in {("「", "」"), ("『", "』"), ('"', '"')}:
        return text[1:-1].strip()
    return text


PARSERS: dict[str, Callable[[str], str]] = {
    "strip": str.strip,
    "first_line": _first_line,
    "strip_prefix": lambda text: _PREFIX.sub("", text, count=1),
    "until_period": _until_period,
    "strip_quotes": _strip_quotes,
}
"""Registry of parse steps by name; a task's YAML and a search space refer to these names."""


def check_parse_steps(steps: Sequence[str], *, where: str) -> None:
    for step in steps:
        if step not in PARSERS:
            raise UserError(f"{where}: unknown parse step {step!r}; known: {', '.join(PARSERS)}")


def parse_output(text: str, steps: Sequence[str]) -> str:
    for step in steps:
        text = PARSERS[step](text)
    return text.strip()


_LEADING_INDEX = re.compile(r"^[(（\[「]?\s*([0-9０-９])(?![0-9０-９])")


def _answer_text(text: str) -> str:
    return _strip_quotes(text.strip().rstrip("。．.")).strip()


def _char_f1(a: str, b: str) -> float:
    common = sum((Counter(a) & Counter(b)).values())
    return 0.0 if common == 0 else 2 * common / (len(a) + len(b))


def pick_choice(text: str, choices: Sequence[str]) -> int | None:
    """The index of the choice a generation names, or None when it names none.

    In order: (1) the text equals a choice (ignoring surrounding space, quotes and a final
    。); (2) it starts with an index in range (``2``, ``2.``, ``(2)``, full-width ``２``);
    (3) it contains a choice (the earliest-starting one; on a tie the longest); (4) the choice
    with the best character F1 against it, the lowest index on a tie. A text sharing no
    character with any choice names none. A digit-only choice is matched as text first.
    """
    answer = _answer_text(text)
    if not answer:
        return None
    texts = [_answer_text(c) for c in choices]
    if answer in texts:
        return texts.index(answer)
    leading = _LEADING_INDEX.match(answer)
    if leading:
        index = int(unicodedata.normalize("NFKC", leading.group(1)))
        if index < len(choices):
            return index
    found = [(answer.find(c), -len(c), i) for i, c in enumerate(texts) if c and c in answer]
    if found:
        return min(found)[2]
    overlaps = [_char_f1(answer, c) for c in texts]
    best = max(overlaps, default=0.0)
    return overlaps.index(best) if best > 0 else None
