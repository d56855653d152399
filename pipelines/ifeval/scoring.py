"""Strict and loose verdicts and the four IFEval accuracies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from .registry import run_checker, validate_kwargs


@dataclass(frozen=True)
class InstructionVerdict:
    instruction_id: str
    strict: bool
    loose: bool


def loose_variants(response: str) -> list[str]:
    """The eight responses M-IFEval's loose mode tries (evaluation_main, after IFEval).

    The response itself, without `*`, without its first line, last line or both (stripped),
    and those three again without `*`.
    """
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    return [
        response,
        response.replace("*", ""),
        remove_first,
        remove_last,
        remove_both,
        remove_first.replace("*", ""),
        remove_last.replace("*", ""),
        remove_both.replace("*", ""),
    ]


def evaluate_response(
    response: str, instruction_id_list: list[str], kwargs_list: list[dict[str, Any]]
) -> list[InstructionVerdict]:
    """One verdict per instruction; a failing kwarg raises `UserError` before any check runs."""
    if len(instruction_id_list) != len(kwargs_list):
        raise UserError(
            f"instruction_id_list has {len(instruction_id_list)} ids but kwargs has "
            f"{len(kwargs_list)} entries; they must be aligned one to one"
        )
    normalised = [
        validate_kwargs(instruction_id, kwargs)
        for instruction_id, kwargs in zip(instruction_id_list, kwargs_list, strict=True)
    ]
    variants: list[str] | None = None
    verdicts = []
    for instruction_id, kwargs in zip(instruction_id_list, normalised, strict=True):
        strict = run_checker(instruction_id, response, kwargs)
        loose = strict
        if not strict:
            if variants is None:
                variants = loose_variants(response)
            loose = any(run_checker(instruction_id, variant, kwargs) for variant in variants[1:])
        verdicts.append(InstructionVerdict(instruction_id, strict, loose))
    return verdicts


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def aggregate(verdict_rows: Sequence[Sequence[InstructionVerdict]]) -> dict[str, float]:
    """Prompt level: share of prompts whose instructions all pass; instruction level: passed / all.

    Values are percentages; with no prompts (or no instructions) the accuracy is 0.0.
    """
    instructions = [verdict for row in verdict_rows for verdict in row]
    return {
        "prompt_level_strict_acc": _percent(
            sum(all(v.strict for v in row) for row in verdict_rows), len(verdict_rows)
        ),
        "inst_level_strict_acc": _percent(sum(v.strict for v in instructions), len(instructions)),
        "prompt_level_loose_acc": _percent(
            sum(all(v.loose for v in row) for row in verdict_rows), len(verdict_rows)
        ),
        "inst_level_loose_acc": _percent(sum(v.loose for v in instructions), len(instructions)),
    }
