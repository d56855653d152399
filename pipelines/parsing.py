"""Turning a raw generation into an answer: named steps, applied in order."""

from __future__ import annotations

import re
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
