"""``TrialEvaluator``: where every trial of a search renders, generates, parses and scores.

Trials are thin Tune functions that call this one actor. The tokenizer (seconds to load and
a gigabyte of memory), the task, the few-shot pool and the validation chunks are loaded once
here rather than in every trial process, and the calls of a rung's trials, arriving
together, reach the engines together, where vLLM batches them.

The rows of each (configuration, chunk) are kept, so a trial's running score over the chunks
seen so far costs no generation; after a restart they come back from the generation cache.

The final run's work starts early. At the end of a search the rungs are small (a bracket's
last survivor on its last chunk), so the engines have room: a survivor that starts its last
chunk with a running score no worse than the best finished score so far has its test rows
generated beside that chunk (with a single chunk: once it finishes as the best so far), and the
baseline's remaining validation rows and its test rows go with the first configuration that
reaches its last chunk. Those results are dropped (the test split never steers the search);
their generations stay in the generation cache, where the final run finds them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from promptsearch.pipelines.data.writers import atomic_path
from promptsearch.pipelines.engine.pool import EnginePool
from promptsearch.pipelines.evaluate import EvalJob, EvalResult, evaluate_many_async
from promptsearch.pipelines.judge import Judge, JudgeCost
from promptsearch.pipelines.tasks import load_task
from promptsearch.search.space import SearchSpace


@dataclass(frozen=True)
class ChunkReport:
    """What a trial reports to Tune after one validation chunk."""

    chunk: int
    score: float
    """The searched metric (``run --metric``, default the task's primary) over every row of
    chunks ``1..chunk`` (running)."""
    chunk_score: float
    metrics: dict[str, float]
    """Every metric of the task, running."""
    generations: int
    cached: int
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class FinalRows:
    """What the final run will generate: the baseline's parameters and the test rows."""

    baseline: dict[str, Any]
    test: list[Any]


class TrialEvaluator:
    """Ray actor body (asynchronous: a rung's trials are served at once)."""

    def __init__(self, inputs: str) -> None:
        """``inputs``: a pickle file (on this node: the evaluator runs on the driver's) of
        the task name, space, chunks, few-shot pool, engine pool, final rows and the metric
        the search maximises. A file rather than
        arguments, so that a restarted evaluator reads them again without the object store."""
        import cloudpickle

        with open(inputs, "rb") as fh:
            (task_name, self.space, self.chunks, self.fewshot, self.pool,
             self.final, metric, self.judge) = cloudpickle.load(fh)
        self.task = load_task(task_name)
        self.metric: str = metric or self.task.primary_metric
        self._results: dict[tuple[str, int], EvalResult] = {}
        self._in_flight: dict[tuple[str, int], tuple[asyncio.Future[Any], int]] = {}
        """(configuration, chunk) being generated: the call's batch and the chunk's place."""
        self._early: list[asyncio.Future[Any]] = []
        self._best: float | None = None
        """The best score of a configuration that finished the validation split."""
        self._early_configs: set[str] = set()
        self._baseline_started = False
        self._judge_cost = JudgeCost()
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
        # A chunk another call is generating (the same trial, retried after its process
        # died) is awaited, not generated again: a second generation could differ (CPU
        # batches) from the one the cache keeps.
        in_flight = {c: self._in_flight[(key, c)] for c in range(1, last + 1)
                     if (key, c) in self._in_flight}
        todo = [c for c in range(1, last + 1)
                if (key, c) not in self._results and c not in in_flight]
        fresh = set(range(first, last + 1))
        seen = [self._results.get((key, c)) for c in range(1, first)]
        if last == len(self.chunks) and seen and None not in seen:
            # A survivor starts its last chunk: its test rows go with it if its running
            # score could still make it the best.
            so_far = task.aggregate([row for r in seen for row in r.rows])[self.metric]
            self._start_final_work(key, config, so_far)
        results: list[EvalResult] = []
        if todo:
            batch = asyncio.ensure_future(evaluate_many_async(
                task, [EvalJob(config, self.chunks[c - 1]) for c in todo], pool=self.pool,
                fewshot=self.fewshot, judge=self.judge))
            for i, chunk in enumerate(todo):
                self._in_flight[(key, chunk)] = (batch, i)
            try:
                results = await batch
            finally:
                for chunk in todo:
                    self._in_flight.pop((key, chunk), None)
        for chunk, result in zip(todo, results, strict=True):
            self._results[(key, chunk)] = result
            if result.judge is not None:
                self._judge_cost.add(result.judge)
        for chunk, (other, i) in in_flight.items():
            self._results[(key, chunk)] = (await other)[i]
        rows: list[dict[str, Any]] = []
        reports = []
        for chunk in range(1, last + 1):
            result = self._results[(key, chunk)]
            rows += result.rows
            if chunk not in fresh:
                continue
            running = task.aggregate(rows)
            # generated or looked up just now (for this trial), not kept from before
            counted = chunk in todo or chunk in in_flight
            reports.append(asdict(ChunkReport(
                chunk=chunk, score=running[self.metric],
                chunk_score=result.metrics[self.metric], metrics=running,
                generations=result.generations if counted else 0,
                cached=result.cached if counted else 0,
                prompt_tokens=result.prompt_tokens if counted else 0,
                output_tokens=result.output_tokens if counted else 0)))
        if last == len(self.chunks) and reports:
            score = reports[-1]["score"]
            self._best = score if self._best is None else max(self._best, score)
            self._start_final_work(key, config, score)
        return reports

    def _start_final_work(self, key: str, config: Any, score: float) -> None:
        if self.final is None:
            return
        jobs = []
        if key not in self._early_configs and (self._best is None or score >= self._best):
            self._early_configs.add(key)
            jobs.append(EvalJob(config, self.final.test))
        if not self._baseline_started:
            self._baseline_started = True
            baseline = self.space.to_config(self.task, self.final.baseline)
            jobs.append(EvalJob(baseline, [row for chunk in self.chunks for row in chunk]))
            jobs.append(EvalJob(baseline, self.final.test))
        if jobs:
            self._early.append(asyncio.ensure_future(evaluate_many_async(
                self.task, jobs, pool=self.pool, fewshot=self.fewshot, judge=self.judge)))

    async def drain(self) -> int:
        """Wait for the final run's early generations; how many calls failed (they only
        cost a cache miss later)."""
        done = await asyncio.gather(*self._early, return_exceptions=True)
        for results in done:
            for result in results if isinstance(results, list) else []:
                if result.judge is not None:
                    self._judge_cost.add(result.judge)
        return sum(isinstance(d, BaseException) for d in done)

    def judge_cost(self) -> dict[str, Any]:
        """What the judge's grading of the trials cost (calls, tokens, time)."""
        return self._judge_cost.to_dict()


def start_evaluator(task_name: str, space: SearchSpace, chunks: Sequence[Sequence[Any]],
                    fewshot: Sequence[dict[str, Any]], pool: EnginePool, *,
                    directory: Path, final: FinalRows | None = None,
                    metric: str | None = None, judge: Judge | None = None) -> Any:
    """The evaluator actor, on the driver's node (it holds no engine), ready to serve. Its
    inputs are written to ``directory``, which must outlive the search. ``final``: start the
    final run's generations early (module doc). ``metric``: what a trial's score is (None:
    the task's primary metric). ``judge``: grades a judged task's answers (``open``)."""
    import cloudpickle
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from promptsearch.pipelines.engine.telemetry import actor_name

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(TrialEvaluator).options(
        name=actor_name("trial-evaluator"), num_cpus=0, max_concurrency=1000,
        max_restarts=2, max_task_retries=2,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
    inputs = (task_name, space, [list(c) for c in chunks], list(fewshot), pool, final, metric,
              judge)
    path = directory / "evaluator-inputs.pkl"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        cloudpickle.dump(inputs, fh)
    actor = actor.remote(str(path))
    ray.get(actor.ready.remote())
    return actor
