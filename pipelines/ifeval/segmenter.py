"""Japanese sentence counting, a port of the ja_sentence_segmenter pipeline M-IFEval uses.

M-IFEval's `count_sentences` runs `make_pipeline(normalize, split_newline, concat_tail_no,
split_punctuation(punctuations="。!?"))` from the `ja-sentence-segmenter` package and counts the
segments.  The steps are reproduced here so that the count agrees without that dependency:
neologd normalisation (full-width ！？ become ASCII, spaces between Japanese characters go),
one segment list per line (empty lines yield nothing), a line ending in の is joined with the
next, and a line is cut after every 。!? that is not inside 「…」 or (…).
"""

from __future__ import annotations

import re
import unicodedata

_ESCAPE = "∯"
_PUNCTUATIONS = "。!?"
_SPLIT = re.compile(rf"(?<!{_ESCAPE})([{_PUNCTUATIONS}])(?!{_ESCAPE})")
_UNESCAPE = re.compile(rf"({_ESCAPE})([{_PUNCTUATIONS}])({_ESCAPE})")
_PROTECTED = (re.compile(r"「[^「」]*」"), re.compile(r"\([^()]*\)"))
_TAIL_NO = re.compile(r"^(?P<result>.+)(の)$")
_MAX_CONCATENATE_LENGTH = 10000

_BLOCKS = "\u4e00-\u9fff\u3040-\u309f\u30a0-\u30ff\u3000-\u303f\uff00-\uffef"
_BASIC_LATIN = "\\x00-\\x7f"
_SPACE_BETWEEN = tuple(
    re.compile(f"([{left}]) ([{right}])")
    for left, right in ((_BLOCKS, _BLOCKS), (_BLOCKS, _BASIC_LATIN), (_BASIC_LATIN, _BLOCKS))
)
_TRANSLATE = str.maketrans(
    "!\"#$%&'()*+,-./:;<=>?@[¥]^_`{|}~｡､･｢｣",
    "！”＃＄％＆’（）＊＋，－．／：；＜＝＞？＠［￥］＾＿｀｛｜｝〜。、・「」",
)
_WIDE_ALNUM = re.compile("([０-９Ａ-Ｚａ-ｚ｡-ﾟ]+)")
_WIDE_SYMBOLS = re.compile("([！”＃＄％＆’（）＊＋，－．／：；＜＞？＠［￥］＾＿｀｛｜｝〜]+)")


def _unicode_normalize(pattern: re.Pattern[str], s: str) -> str:
    s = pattern.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), s)
    return s.replace("－", "-")


def _remove_extra_spaces(s: str) -> str:
    s = re.sub("[ 　]+", " ", s)
    for pattern in _SPACE_BETWEEN:
        while pattern.search(s):
            s = pattern.sub(r"\1\2", s)
    return s


def normalize(s: str) -> str:
    """neologd normalisation as in ja_sentence_segmenter (tildes kept)."""
    s = s.strip()
    s = _unicode_normalize(_WIDE_ALNUM, s)
    s = re.sub("[˗֊‐‑‒–⁃⁻₋−]+", "-", s)
    s = re.sub("[﹣－ｰ—―─━ー]+", "ー", s)
    s = re.sub("[~∼∾〜〰～]", "～", s)
    s = s.translate(_TRANSLATE)
    s = _remove_extra_spaces(s)
    s = _unicode_normalize(_WIDE_SYMBOLS, s)
    s = s.replace("’", "'")
    return s.replace("”", '"')


def _join_tail_no(lines: list[str]) -> list[str]:
    if not lines:
        return []
    joined = []
    former = lines[0]
    for latter in lines[1:]:
        if len(former) < _MAX_CONCATENATE_LENGTH and _TAIL_NO.match(former):
            former += latter
        else:
            joined.append(former)
            former = latter
    joined.append(former)
    return joined


def _escape(match: re.Match[str]) -> str:
    return _SPLIT.sub(rf"{_ESCAPE}\1{_ESCAPE}", match.group(0))


def _split_punctuation(line: str) -> list[str]:
    for pattern in _PROTECTED:
        line = pattern.sub(_escape, line)
    line = _SPLIT.sub("\\1\n", line)
    return _UNESCAPE.sub("\\2", line).splitlines()


def split_sentences(text: str) -> list[str]:
    return [
        sentence
        for line in _join_tail_no(normalize(text).splitlines())
        for sentence in _split_punctuation(line)
    ]


def count_sentences(text: str) -> int:
    return len(split_sentences(text))
