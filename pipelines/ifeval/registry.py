"""The 33 Japanese M-IFEval instruction ids, their checkers and their kwargs.

Ids and kwargs names are M-IFEval's (`instructions_registry.JA_INSTRUCTION_DICT`).  Where the
reference would silently draw a random value (a missing, negative or out-of-range kwarg) or
crash (an unknown relation or language), `validate_kwargs` raises `UserError` instead, so a
verdict never depends on chance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from . import combination, content, keywords, language, length, letters, punctuation, startend
from . import format as fmt
from ._common import LANGUAGE_CODES, RELATIONS

_Validator = Callable[[str, str, Any], Any]


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def _fail(instruction_id: str, name: str, expected: str, value: Any) -> UserError:
    return UserError(f"{instruction_id}: kwarg '{name}' must be {expected}, got {_show(value)}")


def _count(instruction_id: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(instruction_id, name, "a non-negative integer", value)
    return value


def _text(instruction_id: str, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(instruction_id, name, "a string", value)
    return value


def _stripped(instruction_id: str, name: str, value: Any) -> str:
    return _text(instruction_id, name, value).strip()


def _nonempty(instruction_id: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(instruction_id, name, "a non-empty string", value)
    return value


def _keyword(instruction_id: str, name: str, value: Any) -> str:
    return _nonempty(instruction_id, name, value).strip()


def _words(instruction_id: str, name: str, value: Any) -> list[str]:
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(word, str) for word in value)
    ):
        raise _fail(instruction_id, name, "a non-empty list of strings", value)
    return sorted(set(value)) if name == "forbidden_words" else sorted(value)


def _relation(instruction_id: str, name: str, value: Any) -> str:
    if value not in RELATIONS:
        raise _fail(instruction_id, name, "'以上' (at least) or '未満' (less than)", value)
    return value


def _language(instruction_id: str, name: str, value: Any) -> str:
    if value not in LANGUAGE_CODES:
        codes = ", ".join(sorted(LANGUAGE_CODES))
        raise _fail(instruction_id, name, f"an ISO 639-1 code among {codes}", value)
    return value


def _hiragana(instruction_id: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) != 1 or not "ぁ" <= value <= "ん":
        raise _fail(instruction_id, name, "a single hiragana letter (ぁ..ん)", value)
    return value


def _first_word(instruction_id: str, name: str, value: Any) -> str:
    """Lower-cased like the reference, although the response is not (a reference quirk)."""
    return _text(instruction_id, name, value).lower()


def _nth_within_count(instruction_id: str, kwargs: dict[str, Any]) -> None:
    nth, total = kwargs["nth_paragraph"], kwargs["num_paragraphs"]
    if not 1 <= nth <= total:
        raise _fail(instruction_id, "nth_paragraph", f"between 1 and num_paragraphs ({total})", nth)


@dataclass(frozen=True)
class InstructionSpec:
    checker: Callable[..., bool]
    kwargs: Mapping[str, _Validator] = field(default_factory=dict)
    cross_check: Callable[[str, dict[str, Any]], None] | None = None


_KEYWORD = "ja:keywords:"
_LANGUAGE = "ja:language:"
_LENGTH = "ja:length_constraints:"
_CONTENT = "ja:detectable_content:"
_FORMAT = "ja:detectable_format:"
_COMBINATION = "ja:combination:"
_STARTEND = "ja:startend:"
_LETTERS = "ja:letters:"
_PUNCTUATION = "ja:punctuation:"

REGISTRY: Mapping[str, InstructionSpec] = {
    _KEYWORD + "existence": InstructionSpec(keywords.existence, {"keywords": _words}),
    _KEYWORD + "frequency": InstructionSpec(
        keywords.frequency, {"keyword": _keyword, "frequency": _count, "relation": _relation}
    ),
    _KEYWORD + "forbidden_words": InstructionSpec(
        keywords.forbidden_words, {"forbidden_words": _words}
    ),
    _KEYWORD + "letter_frequency": InstructionSpec(
        keywords.letter_frequency,
        {"letter": _hiragana, "let_frequency": _count, "let_relation": _relation},
    ),
    _LANGUAGE + "response_language": InstructionSpec(
        language.response_language, {"language": _language}
    ),
    _LENGTH + "number_sentences": InstructionSpec(
        length.number_sentences, {"num_sentences": _count, "relation": _relation}
    ),
    _LENGTH + "number_paragraphs": InstructionSpec(
        length.number_paragraphs, {"num_paragraphs": _count}
    ),
    _LENGTH + "number_letters": InstructionSpec(
        length.number_letters, {"num_letters": _count, "relation": _relation}
    ),
    _LENGTH + "nth_paragraph_first_word": InstructionSpec(
        length.nth_paragraph_first_word,
        {"num_paragraphs": _count, "nth_paragraph": _count, "first_word": _first_word},
        _nth_within_count,
    ),
    _CONTENT + "number_placeholders": InstructionSpec(
        content.number_placeholders, {"num_placeholders": _count}
    ),
    _CONTENT + "postscript": InstructionSpec(content.postscript, {"postscript_marker": _stripped}),
    _FORMAT + "number_bullet_lists": InstructionSpec(
        fmt.number_bullet_lists, {"num_bullets": _count}
    ),
    _FORMAT + "number_numbered_lists": InstructionSpec(
        fmt.number_numbered_lists, {"num_items": _count}
    ),
    _FORMAT + "constrained_response": InstructionSpec(fmt.constrained_response),
    _FORMAT + "number_highlighted_sections": InstructionSpec(
        fmt.number_highlighted_sections, {"num_highlights": _count}
    ),
    _FORMAT + "multiple_sections": InstructionSpec(
        fmt.multiple_sections,
        {"section_spliter": _stripped, "num_sections": _count},
    ),
    _FORMAT + "json_format": InstructionSpec(fmt.json_format),
    _FORMAT + "title": InstructionSpec(fmt.title),
    _FORMAT + "nominal_ending": InstructionSpec(fmt.nominal_ending, {"count": _count}),
    _COMBINATION + "two_responses": InstructionSpec(combination.two_responses),
    _COMBINATION + "repeat_prompt": InstructionSpec(
        combination.repeat_prompt, {"prompt_to_repeat": _nonempty}
    ),
    _STARTEND + "end_checker": InstructionSpec(startend.end_checker, {"end_phrase": _stripped}),
    _STARTEND + "sentence_unified_end": InstructionSpec(
        startend.sentence_unified_end, {"ending": _text}
    ),
    _STARTEND + "quotation": InstructionSpec(startend.quotation),
    _LETTERS + "furigana": InstructionSpec(letters.furigana),
    _LETTERS + "kansuuji": InstructionSpec(letters.kansuuji),
    _LETTERS + "no_katakana": InstructionSpec(letters.no_katakana),
    _LETTERS + "katakana_only": InstructionSpec(letters.katakana_only),
    _LETTERS + "no_hiragana": InstructionSpec(letters.no_hiragana),
    _LETTERS + "hiragana_only": InstructionSpec(letters.hiragana_only),
    _LETTERS + "kanji": InstructionSpec(
        letters.kanji, {"kanji_limit": _count, "relation": _relation}
    ),
    _PUNCTUATION + "no_comma": InstructionSpec(punctuation.no_comma),
    _PUNCTUATION + "no_period": InstructionSpec(punctuation.no_period),
}

INSTRUCTION_IDS: tuple[str, ...] = tuple(REGISTRY)


def _spec(instruction_id: str) -> InstructionSpec:
    spec = REGISTRY.get(instruction_id) if isinstance(instruction_id, str) else None
    if spec is None:
        examples = ", ".join(INSTRUCTION_IDS[:3])
        raise UserError(
            f"unknown instruction id {instruction_id!r}: expected one of the "
            f"{len(INSTRUCTION_IDS)} M-IFEval Japanese ids such as {examples} "
            "(all listed in promptsearch.pipelines.ifeval.INSTRUCTION_IDS)"
        )
    return spec


def validate_kwargs(instruction_id: str, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Return the kwargs the checker is called with; `None` values are dropped first."""
    spec = _spec(instruction_id)
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise UserError(f"{instruction_id}: kwargs must be an object, got {_show(kwargs)}")
    given = {name: value for name, value in kwargs.items() if value is not None}
    unknown = sorted(set(given) - set(spec.kwargs))
    if unknown:
        expected = ", ".join(spec.kwargs) or "none"
        raise UserError(f"{instruction_id}: unexpected kwarg '{unknown[0]}' (expected: {expected})")
    normalised = {}
    for name, validate in spec.kwargs.items():
        if name not in given:
            raise UserError(f"{instruction_id}: missing kwarg '{name}'")
        normalised[name] = validate(instruction_id, name, given[name])
    if spec.cross_check is not None:
        spec.cross_check(instruction_id, normalised)
    return normalised


def run_checker(instruction_id: str, response: str, normalised: dict[str, Any]) -> bool:
    """Apply a checker to already validated kwargs; an empty response never passes."""
    return bool(response.strip()) and REGISTRY[instruction_id].checker(response, **normalised)


def check_instruction(instruction_id: str, response: str, kwargs: dict[str, Any] | None) -> bool:
    """Strict verdict of one instruction on one response (M-IFEval's strict mode)."""
    return run_checker(instruction_id, response, validate_kwargs(instruction_id, kwargs))
