"""M-IFEval's four accuracies as registered row metrics (the checks: ``pipelines/ifeval``).

A row's reference is its ``Instructions``; the verdicts of one response are computed once and
shared by the four metrics and the per-instruction detail the ``instruct`` task keeps.
Instruction-level accuracy over a split is passed instructions / all instructions, so the
``instruct`` task aggregates it from those details rather than averaging the row values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from promptsearch.pipelines.ifeval import InstructionVerdict, aggregate, evaluate_response
from promptsearch.pipelines.metrics.registry import register_metric

__all__ = ["Instructions", "verdicts"]


@dataclass(frozen=True)
class Instructions:
    """One M-IFEval row's instructions: ids and their keyword arguments, aligned one to one
    (hashable, so a response's verdicts are cached)."""

    ids: tuple[str, ...]
    kwargs_json: str

    @classmethod
    def of(cls, ids: Sequence[str], kwargs: Sequence[Mapping[str, Any] | None]) -> Instructions:
        return cls(tuple(ids), json.dumps(list(kwargs), sort_keys=True, ensure_ascii=False))

    @property
    def kwargs(self) -> list[dict[str, Any] | None]:
        return json.loads(self.kwargs_json)


@lru_cache(maxsize=4096)
def verdicts(prediction: str, reference: Instructions) -> tuple[InstructionVerdict, ...]:
    """Strict and loose verdict of every instruction of the row."""
    return tuple(evaluate_response(prediction, list(reference.ids), reference.kwargs))


def _register(name: str, description: str) -> None:
    def score(prediction: str, reference: Instructions) -> float:
        return aggregate([verdicts(prediction, reference)])[name]

    score.__name__ = name
    register_metric(name, description=description)(score)


_register("prompt_level_strict_acc", "share of prompts whose instructions all pass, strict")
_register("inst_level_strict_acc", "share of instructions that pass, strict")
_register("prompt_level_loose_acc", "share of prompts whose instructions all pass, loose "
          "(any of 8 variants of the response)")
_register("inst_level_loose_acc", "share of instructions that pass, loose: the signal a "
          "search can climb with a small model")
