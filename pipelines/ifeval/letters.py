"""ja:letters:* checks (script constraints)."""

from __future__ import annotations

import re
import unicodedata

from ._common import compare

_KANJI = r"[\u4e00-\u9faf]"


def furigana(value: str) -> bool:
    """Every kanji run must be followed by its reading in full-width parentheses: 漢字（かんじ）.

    Only U+4E00..U+9FAF counts as kanji, as in the reference, so 々 needs no reading.
    """
    runs = len(re.findall(_KANJI + "+", value))
    with_reading = len(re.findall(_KANJI + r"+（[ぁ-ん]+）", value))
    return runs == with_reading


def kansuuji(value: str) -> bool:
    """No digit at all; `\\d` also matches full-width digits such as ３."""
    return not re.search(r"\d", value)


def no_katakana(value: str) -> bool:
    return not any("ァ" <= char <= "ヺ" or "ｦ" <= char <= "ﾟ" for char in value)


def _is_letter(char: str) -> bool:
    return unicodedata.category(char).startswith("L")


def katakana_only(value: str) -> bool:
    """Letters must be katakana ァ..ン, ー, ・ or half-width; ヴ (after ン) fails (reference)."""
    return all(
        "ァ" <= char <= "ン" or char in "ー・" or "ｦ" <= char <= "ﾟ" or not _is_letter(char)
        for char in value
    )


def no_hiragana(value: str) -> bool:
    return not any("ぁ" <= char <= "ゖ" for char in value)


def hiragana_only(value: str) -> bool:
    return all("ぁ" <= char <= "ん" or char == "ー" or not _is_letter(char) for char in value)


def kanji(value: str, *, kanji_limit: int, relation: str) -> bool:
    return compare(len(re.findall(_KANJI, value)), relation, kanji_limit)
