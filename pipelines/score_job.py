"""``promptsearch score``: a file of predictions scored against the task's references."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def score_file(task_name: str, *, predictions: Path, references: Path | None = None,
               per_row: Path | None = None,
               field_map: Mapping[str, str] | None = None) -> dict[str, float]:
    """The split-level metrics of ``predictions`` (rows with ``id`` and ``output``), matched
    by id to ``references`` (else the rows must carry the reference fields); with
    ``per_row``, each row's metrics are written there (JSONL), never over an input."""
    from promptsearch.pipelines.data.predictions import match_predictions, per_row_records
    from promptsearch.pipelines.data.writers import input_files, refuse_overwrite, write_jsonl
    from promptsearch.pipelines.evaluate import score_rows
    from promptsearch.pipelines.tasks import load_task

    if per_row is not None:
        refuse_overwrite([per_row], inputs=input_files(predictions, references),
                         option="--per-row", overwrite=True)
    task = load_task(task_name)
    examples, outputs = match_predictions(task, predictions, references, field_map=field_map)
    rows, metrics = score_rows(task, examples, outputs)
    if per_row is not None:
        write_jsonl(per_row, per_row_records(task, examples, rows))
    return metrics
