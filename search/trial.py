"""One trial: a configuration scored chunk by chunk on the validation split.

After each chunk the trial reports the score over every row seen so far (a running value of
the split-level metric), so that when ASHA stops a trial early the value Optuna records is
comparable with a finished trial's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from promptsearch.pipelines.evaluate import evaluate
from promptsearch.pipelines.pool import EnginePool
from promptsearch.pipelines.tasks import load_task
from promptsearch.search.space import SearchSpace


def validation_chunks(examples: Sequence[Any], n: int) -> list[list[Any]]:
    """``n`` contiguous chunks of near-equal size (fewer if there are fewer examples)."""
    n = max(1, min(n, len(examples)))
    size, extra = divmod(len(examples), n)
    chunks, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        chunks.append(list(examples[start:end]))
        start = end
    return chunks


def run_trial(params: dict[str, Any], *, pool: EnginePool, task_name: str, space: SearchSpace,
              chunks: list[list[dict[str, Any]]], fewshot: list[dict[str, Any]]) -> None:
    from ray import tune

    task = load_task(task_name)
    config = space.to_config(task, params)
    rows: list[dict[str, Any]] = []
    totals = {"generations": 0, "cached": 0, "prompt_tokens": 0, "output_tokens": 0}
    for number, chunk in enumerate(chunks, start=1):
        result = evaluate(task, config, chunk, pool=pool, fewshot=fewshot)
        rows += result.rows
        running = task.aggregate(rows)
        for key in totals:
            totals[key] += getattr(result, key)
        tune.report({"score": running[task.primary_metric], "chunk": number,
                     "chunk_score": result.metrics[task.primary_metric],
                     **{f"metric/{m}": v for m, v in running.items()}, **totals})
