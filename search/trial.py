"""One trial: a configuration scored chunk by chunk on the validation split.

The trial itself is thin: the ``TrialEvaluator`` actor does the work, chunks up to the next
rung in one call. After each chunk the trial reports the score over every row seen so far (a
running value of the split-level metric), so that a trial stopped early has a value
comparable with a finished trial's. Each report carries a checkpoint, so a trial whose
process dies resumes where it stopped; it first reports its last chunk again, so that the
scheduler can hold it at a rung or let it go on as it decided.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COUNTS = ("generations", "cached", "prompt_tokens", "output_tokens")


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


def run_trial(params: dict[str, Any], *, evaluator: Any, milestones: Sequence[int],
              n_chunks: int) -> None:
    import ray
    from ray import tune

    state = _restore()
    if state is not None:
        tune.report(state["last"])  # where it stopped: the scheduler holds or releases it
    else:
        state = {"chunk": 0, "chunk_scores": [], "totals": dict.fromkeys(COUNTS, 0)}
    totals, chunk_scores = state["totals"], state["chunk_scores"]
    while state["chunk"] < n_chunks:
        first = state["chunk"] + 1
        last = min([m for m in milestones if m >= first] + [n_chunks])
        for report in ray.get(evaluator.evaluate.remote(params, first, last)):
            for key in COUNTS:
                totals[key] += report[key]
            chunk_scores.append(report["chunk_score"])
            metrics = {"score": report["score"], "chunk": report["chunk"],
                       "chunk_score": report["chunk_score"], "chunk_scores": list(chunk_scores),
                       **{f"metric/{m}": v for m, v in report["metrics"].items()}, **totals}
            state = {"chunk": report["chunk"], "chunk_scores": chunk_scores, "totals": totals,
                     "last": metrics}
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / _STATE).write_text(json.dumps(state))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


_STATE = "trial_state.json"


def _restore() -> dict[str, Any] | None:
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return json.loads((Path(directory) / _STATE).read_text())
