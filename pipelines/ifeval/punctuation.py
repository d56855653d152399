"""ja:punctuation:* checks."""

from __future__ import annotations


def no_comma(value: str) -> bool:
    return "、" not in value


def no_period(value: str) -> bool:
    return "。" not in value
