"""The judge's grade as a metric (task ``open``): a 1-5 grade per row from a judge model.

The grade cannot be computed from the answer alone: ``evaluate`` asks the judge for the whole
batch first and hands each row's ``Grade`` to the metric as its reference. A row the judge
gave no parsable grade scores ``None`` (recorded as such, never a number); the split's
``judge_score`` is the mean over graded rows, and ``judge_unparsable`` the share (x100) of
rows without a grade.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from promptsearch.pipelines.metrics.registry import register_metric

__all__ = ["judge_aggregate", "judge_score"]


@register_metric("judge_score", description="the judge model's grade, 1 to 5 (not x100)")
def judge_score(prediction: str, reference: Any) -> float | None:
    """The grade the judge gave this row's answer (a ``judge.Grade``), None if unparsable."""
    value = getattr(reference, "value", None)
    return None if value is None else float(value)


def judge_aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean grade over the graded rows, and the share of rows without a grade (x100).

    A split with no graded row at all has no score: that raises (a trial then fails and is
    recorded as failed, never as 0)."""
    from promptsearch.pipelines.judge import JudgeError

    graded = [float(r["judge_score"]) for r in rows if r.get("judge_score") is not None]
    if rows and not graded:
        raise JudgeError(f"the judge gave no parsable grade for any of {len(rows)} answers "
                         "(even after asking again); use a more capable judge model")
    return {"judge_score": sum(graded) / len(graded) if graded else 0.0,
            "judge_unparsable": 100.0 * (len(rows) - len(graded)) / len(rows) if rows else 0.0}
