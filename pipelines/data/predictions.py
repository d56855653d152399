"""Reading a predictions file (a run's or the user's own) and matching it to references."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from promptsearch.pipelines.data.readers import read_located_records
from promptsearch.pipelines.data.taskdata import checked_example, load_examples
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.tasks import Task


def match_predictions(task: Task, predictions: Path, references: Path | None, *,
                      field_map: Mapping[str, str] | None = None,
                      ) -> tuple[list[dict[str, Any]], list[str]]:
    """(examples, outputs) in the references' order, matched by id.

    Without ``references`` the prediction rows must carry the reference fields themselves
    (as a run's ``predictions/*.jsonl`` do).
    """
    located = read_located_records(predictions)
    outputs: dict[str, str] = {}
    for where, row in located:
        for key in ("id", "output"):
            if key not in row:
                raise UserError(f"{predictions} {where}: missing field {key!r}; predictions "
                                "need 'id' and 'output'")
        rid = str(row["id"])
        if rid in outputs:
            raise UserError(f"{predictions} {where}: duplicate id {rid!r}")
        if not isinstance(row["output"], str):
            raise UserError(f"{predictions} {where}: 'output' must be text")
        outputs[rid] = row["output"]
    if references is None:
        examples = [checked_example(task, {**row, task.id_field: row["id"]},
                                    where=f"{predictions} {where} (no --references given)")
                    for where, row in located]
    else:
        examples = load_examples(task, references, field_map=field_map)
    ids = [task.example_id(e) for e in examples]
    missing = [i for i in ids if i not in outputs]
    if missing:
        raise UserError(f"{predictions}: no prediction for id {missing[0]!r} "
                        f"({len(missing)} missing of {len(ids)})")
    extra = sorted(set(outputs) - set(ids))
    if extra:
        raise UserError(f"{predictions}: id {extra[0]!r} is not in the references "
                        f"({len(extra)} unknown ids)")
    return examples, [outputs[i] for i in ids]


def per_row_records(task: Task, examples: Sequence[Mapping[str, Any]],
                    rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": task.example_id(e), **r} for e, r in zip(examples, rows, strict=True)]
