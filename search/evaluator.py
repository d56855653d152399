"""``TrialEvaluator``: where every trial of a search renders, generates, parses and scores.

Trials are thin Tune functions that call this one actor. The tokenizer (seconds to load and
a gigabyte of memory), the task, the few-shot pool and the validation chunks are loaded once
here rather than in every trial process, and the calls of a rung's trials, arriving
together, reach the engines together, where vLLM batches them.

The rows of each (configuration, chunk) are kept, so a trial's running score over the chunks
seen so far costs no generation; after a restart they come back from the generation cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from promptsearch.pipelines.evaluate import EvalJob, EvalResult, evaluate_many_async
from promptsearch.pipelines.pool import EnginePool
from promptsearch.pipelines.tasks import load_task
from promptsearch.pipelines.writers import atomic_path
from promptsearch.search.space import SearchSpace


@dataclass(frozen=True)
class ChunkReport:
    """What a trial reports to Tune after one validation chunk."""

    chunk: int
    score: float
    """The primary metric over every row of chunks ``1..chunk`` (running)."""
    chunk_score: float
    metrics: dict[str, float]
    """Every metric of the task, running."""
    generations: int
    cached: int
    prompt_tokens: int
    output_tokens: int


class TrialEvaluator:
    """Ray actor body (asynchronous: a rung's trials are served at once)."""

    def __init__(self, inputs: str) -> None:
        """``inputs``: a pickle file (on this node: the evaluator runs on the driver's) of
        the task name, space, chunks, few-shot pool and engine pool. A file rather than
        arguments, so that a restarted evaluator reads them again without the object store."""
        import cloudpickle

        with open(inputs, "rb") as fh:
            task_name, self.space, self.chunks, self.fewshot, self.pool = cloudpickle.load(fh)
        self.task = load_task(task_name)
        self._results: dict[tuple[str, int], EvalResult] = {}
        self.pool.tokenizer  # noqa: B018 -- loaded now, not in the first trial's time

    def ready(self) -> bool:
        return True

    async def evaluate(self, params: dict[str, Any], first: int,
                       last: int) -> list[dict[str, Any]]:
        """Chunks ``first..last`` (1-based) of the configuration ``params`` gives, in one call
        to the pool; a report per chunk."""
        task = self.task
        config = self.space.to_config(task, params)
        key = json.dumps(config.to_dict(), sort_keys=True)
        todo = [c for c in range(1, last + 1) if (key, c) not in self._results]
        fresh = set(range(first, last + 1))
        results = await evaluate_many_async(
            task, [EvalJob(config, self.chunks[c - 1]) for c in todo], pool=self.pool,
            fewshot=self.fewshot)
        for chunk, result in zip(todo, results, strict=True):
            self._results[(key, chunk)] = result
        rows: list[dict[str, Any]] = []
        reports = []
        for chunk in range(1, last + 1):
            result = self._results[(key, chunk)]
            rows += result.rows
            if chunk not in fresh:
                continue
            running = task.aggregate(rows)
            counted = chunk in todo  # generated or looked up just now, not kept from before
            reports.append(asdict(ChunkReport(
                chunk=chunk, score=running[task.primary_metric],
                chunk_score=result.metrics[task.primary_metric], metrics=running,
                generations=result.generations if counted else 0,
                cached=result.cached if counted else 0,
                prompt_tokens=result.prompt_tokens if counted else 0,
                output_tokens=result.output_tokens if counted else 0)))
        return reports


def start_evaluator(task_name: str, space: SearchSpace, chunks: Sequence[Sequence[Any]],
                    fewshot: Sequence[dict[str, Any]], pool: EnginePool, *,
                    directory: Path) -> Any:
    """The evaluator actor, on the driver's node (it holds no engine), ready to serve. Its
    inputs are written to ``directory``, which must outlive the search."""
    import cloudpickle
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from promptsearch.pipelines.telemetry import actor_name

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(TrialEvaluator).options(
        name=actor_name("trial-evaluator"), num_cpus=0, max_concurrency=1000,
        max_restarts=2, max_task_retries=2,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
    inputs = (task_name, space, [list(c) for c in chunks], list(fewshot), pool)
    path = directory / "evaluator-inputs.pkl"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        cloudpickle.dump(inputs, fh)
    actor = actor.remote(str(path))
    ray.get(actor.ready.remote())
    return actor
