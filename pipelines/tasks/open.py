"""Open-ended requests graded by a judge model, as ELYZA-tasks-100 is graded.

Rows: ``id``, ``input`` (the request), ``reference`` (a model answer) and ``eval_aspect``
(the question's grading notes). ELYZA-tasks-100's own files (columns ``input``, ``output``,
``eval_aspect``, no id) are read as they are: ``output`` becomes ``reference`` and the ids are
``<file stem>-<row number>``.

The metric is the judge's grade (``metrics/judge.py``): ``evaluate`` grades the batch and
puts each row's ``Grade`` under ``judge`` before scoring, which ``reference`` hands over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.metrics.judge import judge_aggregate

ELYZA_COLUMNS = ("input", "output", "eval_aspect")
JUDGED = True
"""``evaluate`` asks a judge for this task's rows before scoring them."""


def read_file(path: Path, field_map: Mapping[str, str] | None) -> list[dict[str, Any]] | None:
    """ELYZA-tasks-100 columns as this task's fields; None for any other layout."""
    from promptsearch.pipelines.data.readers import read_records

    if field_map or path.suffix not in (".jsonl", ".csv", ".parquet"):
        return None
    rows = read_records(path)
    if not rows or "reference" in rows[0] or not all(c in rows[0] for c in ELYZA_COLUMNS):
        return None
    out = []
    for n, row in enumerate(rows, start=1):
        missing = [c for c in ELYZA_COLUMNS if row.get(c) in (None, "")]
        if missing:
            raise UserError(f"{path} row {n}: missing {missing[0]!r} (ELYZA-tasks-100 rows "
                            f"need {', '.join(ELYZA_COLUMNS)})")
        out.append({"id": str(row.get("id") or f"{path.stem}-{n:03d}"), "input": row["input"],
                    "reference": row["output"], "eval_aspect": row["eval_aspect"]})
    return out


def reference(example: Mapping[str, Any]) -> Any:
    if "judge" not in example:
        raise UserError("task open is scored by a judge model: pass --judge NAME|DIR, or "
                        "--judge-url URL --judge-model NAME")
    return example["judge"]


def details(answer: str, example: Mapping[str, Any]) -> dict[str, Any]:
    grade = example["judge"]
    return {"judge_reply": grade.reply, "judge_retried": grade.retried,
            "judge_error": grade.error}


def aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return judge_aggregate(rows)
