"""One trial: a configuration scored chunk by chunk on the validation split.

The trial itself is thin: the ``TrialEvaluator`` actor does the work, chunks up to the next
rung in one call. After each chunk the trial reports the score over every row seen so far (a
running value of the split-level metric), so that a trial stopped early has a value
comparable with a finished trial's (``TrialReport``). The report at a rung and the last one
carry a checkpoint, so a trial whose process dies resumes from there; it first reports that
chunk again, so that the scheduler can hold it at the rung or let it go on as it decided.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from promptsearch.pipelines.contract import Contract

COUNTS = ("generations", "cached", "prompt_tokens", "output_tokens")


class TrialReport(Contract):
    """What a trial reports to Tune after each validation chunk: the ``result`` that the
    scheduler, the searcher, the progress line and the trial records read."""

    chunk: int
    """Chunks done (Tune's ``time_attr``: rungs are counted in chunks)."""
    score: float
    """The searched metric over every row of chunks ``1..chunk`` (running): Tune's
    ``metric``, comparable between a pruned trial and a finished one."""
    chunk_score: float
    """The searched metric over this chunk's rows alone."""
    chunk_scores: list[float]
    """``chunk_score`` of every chunk so far, in order."""
    metrics: dict[str, float]
    """Every metric of the task, running."""
    generations: int = 0
    """Rows generated or looked up in the cache so far (the four counts are totals)."""
    cached: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0

    @classmethod
    def from_result(cls, result: Mapping[str, Any] | None) -> TrialReport | None:
        """The report inside a Tune result (which adds keys of its own); None before the
        trial's first report."""
        if not result or "score" not in result:
            return None
        return cls.model_validate({k: result[k] for k in cls.model_fields if k in result})


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
        for chunk in ray.get(evaluator.evaluate.remote(params, first, last)):
            for key in COUNTS:
                totals[key] += chunk[key]
            chunk_scores.append(chunk["chunk_score"])
            report = TrialReport(chunk=chunk["chunk"], score=chunk["score"],
                                 chunk_score=chunk["chunk_score"],
                                 chunk_scores=list(chunk_scores), metrics=chunk["metrics"],
                                 **totals).model_dump()
            state = {"chunk": chunk["chunk"], "chunk_scores": chunk_scores, "totals": totals,
                     "last": report}
            if state["chunk"] < last:
                tune.report(report)
                continue
            # A checkpoint only where the trial may wait (a rung) or ends: a trial restarted
            # from it evaluates the chunks after it again, from the evaluator's results.
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / _STATE).write_text(json.dumps(state))
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))


_STATE = "trial_state.json"


def _restore() -> dict[str, Any] | None:
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return json.loads((Path(directory) / _STATE).read_text())
