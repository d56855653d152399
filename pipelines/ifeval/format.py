"""ja:detectable_format:* checks."""

from __future__ import annotations

import itertools
import json
import re

from ._common import remove_quotes, tokenizer

CONSTRAINED_RESPONSE_OPTIONS = ("はい、そうです。", "いいえ、違います。", "どちらとも言えません。")

def number_bullet_lists(value: str, *, num_bullets: int) -> bool:
    """Lines starting with `・`, a single `*` (not `**`) or `- ` count as bullets.

    The patterns are the reference's verbatim: `^\\s*` may span blank lines and `[^*]` may be a
    newline, so a lone `*` line counts too.
    """
    japanese = re.findall(r"^\s*・.*$", value, flags=re.MULTILINE)
    star = re.findall(r"^\s*\*[^\*].*$", value, flags=re.MULTILINE)
    dash = re.findall(r"^\s*-\s+.*$", value, flags=re.MULTILINE)
    return len(japanese) + len(star) + len(dash) == num_bullets


def number_numbered_lists(value: str, *, num_items: int) -> bool:
    return len(re.findall(r"^\s*\d+\.\s.*$", value, flags=re.MULTILINE)) == num_items


def constrained_response(value: str) -> bool:
    value = value.strip()
    return any(option in value for option in CONSTRAINED_RESPONSE_OPTIONS)


def number_highlighted_sections(value: str, *, num_highlights: int) -> bool:
    highlights = re.findall(r"《[^\n《》]*》", value)
    return sum(1 for h in highlights if h.strip("《》").strip()) >= num_highlights


def section_pattern(section_spliter: str) -> str:
    """The spliter is matched literally. The reference puts it into the regex unescaped, so a
    spliter from the data could be a pattern that backtracks for hours (``(a+)+b``). For
    spliters without regex metacharacters, such as the data's 章 and 節, the result is the
    same."""
    return r"\s?第[\d\uFF10-\uFF19]+" + re.escape(section_spliter) + r"\s?"


def multiple_sections(value: str, *, section_spliter: str, num_sections: int) -> bool:
    return len(re.split(section_pattern(section_spliter), value)) - 1 >= num_sections


def json_format(value: str) -> bool:
    value = (
        value.strip()
        .removeprefix("```json")
        .removeprefix("```Json")
        .removeprefix("```JSON")
        .removeprefix("```")
        .removesuffix("```")
        .strip()
    )
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def title(value: str) -> bool:
    return any(t.lstrip("『").rstrip("』").strip() for t in re.findall(r"『[^\n]+』", value))


def nominal_ending(value: str, *, count: int) -> bool:
    """Counts 。！？ tokens right after a noun (体言止め), outside single-line quotes, with
    the reference's tokenizer (janome, IPADIC), so a verdict is the reference's verdict."""
    tokens = list(tokenizer().tokenize(remove_quotes(value)))
    nouns = sum(1 for previous, token in itertools.pairwise(tokens)
                if token.surface in "。！？" and previous.part_of_speech.startswith("名詞"))
    return nouns >= count
