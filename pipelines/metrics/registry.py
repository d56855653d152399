"""Metrics by name: what a task's YAML lists under ``metrics`` and ``run --metric`` picks.

Every metric has one signature, ``score(prediction, reference) -> float``: the parsed answer
first, then the task's reference for the row (QA: the list of gold answers; summary: the
reference summary; instruct: the row's instructions; choice: the correct label). Row values
are percentages (x100). The split-level value is the mean of the row values unless the task's
module aggregates its rows itself (instruct: instruction-level accuracy is a ratio over all
instructions, not a mean over prompts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from promptsearch.pipelines.errors import UserError

__all__ = ["METRICS", "Metric", "get_metric", "register_metric"]

ScoreFn = Callable[[str, Any], float]


@dataclass(frozen=True)
class Metric:
    """A registered metric: a name, its row function and what it measures."""

    name: str
    score: ScoreFn
    """``score(prediction, reference) -> float``, x100."""
    description: str


METRICS: dict[str, Metric] = {}
"""Every registered metric by name (filled when ``promptsearch.pipelines.metrics`` is imported)."""


def register_metric(name: str, *, description: str) -> Callable[[ScoreFn], ScoreFn]:
    """Register ``fn(prediction, reference) -> float`` under ``name`` (names are unique)."""

    def add(fn: ScoreFn) -> ScoreFn:
        if name in METRICS and METRICS[name].score is not fn:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = Metric(name=name, score=fn, description=description)
        return fn

    return add


def get_metric(name: str, *, among: Iterable[str] | None = None, where: str = "metric") -> Metric:
    """The metric called ``name``; an unknown name (or one outside ``among``) lists the known."""
    known = list(among) if among is not None else list(METRICS)
    if name not in known or name not in METRICS:
        raise UserError(f"{where}: unknown metric {name!r}; known: {', '.join(known)}")
    return METRICS[name]
