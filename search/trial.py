"""One trial: a configuration scored chunk by chunk on the validation split.

After each chunk the trial reports the score over every row seen so far (a running value of
the split-level metric), so that when ASHA stops a trial early the value Optuna records is
comparable with a finished trial's. Each report carries a checkpoint (chunks done, counts), so
a trial that the scheduler pauses at a rung, or that fails, resumes where it stopped: the rows
of its finished chunks are read back from the generation cache, not generated again.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
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
    state = _restore() or {"chunk": 0, "chunk_scores": [], "totals": {
        "generations": 0, "cached": 0, "prompt_tokens": 0, "output_tokens": 0}}
    totals, chunk_scores = state["totals"], state["chunk_scores"]
    rows: list[dict[str, Any]] = []
    for done in chunks[:state["chunk"]]:  # a resumed trial: its rows come from the cache
        rows += evaluate(task, config, done, pool=pool, fewshot=fewshot).rows
    for number in range(state["chunk"] + 1, len(chunks) + 1):
        result = evaluate(task, config, chunks[number - 1], pool=pool, fewshot=fewshot)
        rows += result.rows
        running = task.aggregate(rows)
        for key in totals:
            totals[key] += getattr(result, key)
        chunk_scores.append(result.metrics[task.primary_metric])
        metrics = {"score": running[task.primary_metric], "chunk": number,
                   "chunk_score": chunk_scores[-1], "chunk_scores": list(chunk_scores),
                   **{f"metric/{m}": v for m, v in running.items()}, **totals}
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / _STATE).write_text(json.dumps(
                {"chunk": number, "chunk_scores": chunk_scores, "totals": totals}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


_STATE = "trial_state.json"


def _restore() -> dict[str, Any] | None:
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return json.loads((Path(directory) / _STATE).read_text())
