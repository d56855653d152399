"""ja:detectable_format:* checks."""

from __future__ import annotations

import itertools
import json
import re

from ._common import remove_quotes, tagger

CONSTRAINED_RESPONSE_OPTIONS = ("はい、そうです。", "いいえ、違います。", "どちらとも言えません。")

# UniDic classes that IPADIC (janome, the reference tokenizer) tags as 名詞: nouns, pronouns,
# na-adjective stems (IPADIC 名詞,形容動詞語幹) and noun-like suffixes (IPADIC 名詞,接尾).
_NOUN_POS1 = frozenset({"名詞", "代名詞", "形状詞"})
_NOUN_SUFFIX_POS2 = frozenset({"名詞的", "形状詞的"})


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
    """The spliter goes into the regex unescaped, as in the reference."""
    return r"\s?第[\d\uFF10-\uFF19]+" + section_spliter + r"\s?"


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


def _is_noun(node: object) -> bool:
    feature = node.feature  # type: ignore[attr-defined]
    if feature.pos1 == "接尾辞":
        return feature.pos2 in _NOUN_SUFFIX_POS2
    return feature.pos1 in _NOUN_POS1


def nominal_ending(value: str, *, count: int) -> bool:
    """Counts 。！？ tokens right after a noun (体言止め), outside single-line quotes.

    The reference tokenizes with janome, which emits whitespace as its own token; a
    punctuation mark preceded by whitespace therefore does not follow a noun here either.
    """
    nodes = list(tagger()(remove_quotes(value)))
    nouns = 0
    for previous, node in itertools.pairwise(nodes):
        if node.surface in "。！？" and not node.white_space and _is_noun(previous):
            nouns += 1
    return nouns >= count
