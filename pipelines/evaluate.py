"""Render, generate, parse, score: one configuration over one set of examples."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from promptsearch.pipelines.data.rows import output_row
from promptsearch.pipelines.engine.actor import Generation
from promptsearch.pipelines.engine.pool import EnginePool, Progress
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.prompting.config import PromptConfig
from promptsearch.pipelines.prompting.prompts import render_requests
from promptsearch.pipelines.tasks import Task

if TYPE_CHECKING:
    from promptsearch.pipelines.judge import Judge, JudgeCost

Example = Mapping[str, Any]
T = TypeVar("T")


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    """Per example: id, inputs, raw output, parsed output, references and per-row metrics."""
    metrics: dict[str, float]
    """Split-level metrics (empty when the examples carry no references)."""
    generations: int
    cached: int
    prompt_tokens: int
    output_tokens: int
    seconds: float
    judge: JudgeCost | None = None
    """What grading this call's rows cost (a judged task; on the first result of a call)."""


def has_references(task: Task, examples: Sequence[Example]) -> bool:
    return all(e.get(f) not in (None, "") for e in examples for f in task.reference_fields)


def score_rows(task: Task, examples: Sequence[Example],
               outputs: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-row and split-level metrics of parsed outputs (also what ``score`` uses)."""
    per_row = [task.score_row(out, ex) for ex, out in zip(examples, outputs, strict=True)]
    return per_row, task.aggregate(per_row)


@dataclass(frozen=True)
class EvalJob:
    """One configuration over one set of examples."""

    config: PromptConfig
    examples: Sequence[Example]


def evaluate(task: Task, config: PromptConfig, examples: Sequence[Example], *,
             pool: EnginePool, fewshot: Sequence[Example],
             progress: Progress | None = None, judge: Judge | None = None) -> EvalResult:
    return evaluate_many(task, [EvalJob(config, examples)], pool=pool, fewshot=fewshot,
                         progress=progress, judge=judge)[0]


def evaluate_many(task: Task, jobs: Sequence[EvalJob], *, pool: EnginePool,
                  fewshot: Sequence[Example], progress: Progress | None = None,
                  judge: Judge | None = None) -> list[EvalResult]:
    """Several configurations in one call to the pool, so the engines batch them together
    (the final run: best on validation and test, baseline on test). A judged task's rows
    are then graded by ``judge``, all in one batch."""
    start = time.perf_counter()
    requests, samplings = _render(task, jobs, fewshot)
    gens = pool.generate(requests, samplings, progress=progress)
    jobs, cost = run_sync(_grade(task, jobs, gens, judge))
    return _results(task, jobs, gens, time.perf_counter() - start, cost)


async def evaluate_many_async(task: Task, jobs: Sequence[EvalJob], *, pool: EnginePool,
                              fewshot: Sequence[Example],
                              judge: Judge | None = None) -> list[EvalResult]:
    start = time.perf_counter()
    requests, samplings = _render(task, jobs, fewshot)
    gens = await pool.generate_async(requests, samplings)
    jobs, cost = await _grade(task, jobs, gens, judge)
    return _results(task, jobs, gens, time.perf_counter() - start, cost)


def is_judged(task: Task) -> bool:
    """The task's metric is a judge model's grade (``open``)."""
    return bool(getattr(task.module, "JUDGED", False))


async def _grade(task: Task, jobs: Sequence[EvalJob], gens: Sequence[Generation],
                 judge: Judge | None) -> tuple[Sequence[EvalJob], JudgeCost | None]:
    """For a judged task: every generated answer of every job graded in one batch; each
    example gets its ``Grade`` under ``judge``, which the task's metric reads."""
    if not is_judged(task):
        return jobs, None
    from promptsearch.pipelines.judge import GradeItem, grade_answers

    places, items, start = [], [], 0
    for j, job in enumerate(jobs):
        for i, example in enumerate(job.examples):
            gen = gens[start + i]
            if gen.ok and has_references(task, [example]):
                places.append((j, i))
                items.append(GradeItem(
                    question=str(example["input"]), reference=str(example["reference"]),
                    eval_aspect=str(example.get("eval_aspect") or ""),
                    answer=task.read_answer(gen.text, job.config.parse, example)))
        start += len(job.examples)
    if not items:
        return jobs, None
    if judge is None:
        raise UserError(f"task {task.name} is scored by a judge model: pass --judge NAME|DIR, "
                        "or --judge-url URL --judge-model NAME")
    grades, cost = await grade_answers(judge, items)
    graded = [[dict(e) for e in job.examples] for job in jobs]
    for (j, i), grade in zip(places, grades, strict=True):
        graded[j][i]["judge"] = grade
    return [EvalJob(job.config, rows) for job, rows in zip(jobs, graded, strict=True)], cost


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, inside a running loop or not."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


def _render(task: Task, jobs: Sequence[EvalJob],
            fewshot: Sequence[Example]) -> tuple[list[Any], list[Any]]:
    requests, samplings = [], []
    for job in jobs:
        rendered = render_requests(task, job.config, job.examples, fewshot)
        requests += rendered
        samplings += [job.config.sampling] * len(rendered)
    return requests, samplings


def _results(task: Task, jobs: Sequence[EvalJob], gens: Sequence[Generation],
             seconds: float, judge_cost: JudgeCost | None = None) -> list[EvalResult]:
    results, start = [], 0
    for job in jobs:
        part = gens[start:start + len(job.examples)]
        start += len(job.examples)
        results.append(_result(task, job.config, job.examples, part, seconds))
    if results and judge_cost is not None:
        results[0].judge = judge_cost
    return results


def _result(task: Task, config: PromptConfig, examples: Sequence[Example],
            gens: Sequence[Generation], seconds: float) -> EvalResult:
    _raise_on_failed_rows(task, examples, gens)
    rows = [output_row(example, gen, task=task, config=config)
            for example, gen in zip(examples, gens, strict=True)]
    outputs = [row["output"] for row in rows]
    metrics: dict[str, float] = {}
    if has_references(task, examples):
        per_row, metrics = score_rows(task, examples, outputs)
        for row, example, scores in zip(rows, examples, per_row, strict=True):
            row.update({f: example.get(f) for f in task.reference_fields})
            row.update(scores)
    return EvalResult(rows=rows, metrics=metrics, generations=len(gens),
                      cached=sum(g.cached for g in gens),
                      prompt_tokens=sum(g.prompt_tokens for g in gens),
                      output_tokens=sum(g.output_tokens for g in gens),
                      seconds=seconds)


class GenerationFailed(UserError):
    """A row could not be generated (too long for the context, engine error)."""


def _raise_on_failed_rows(task: Task, examples: Sequence[Example],
                          gens: Sequence[Generation]) -> None:
    for example, gen in zip(examples, gens, strict=True):
        if not gen.ok:
            failed = sum(not g.ok for g in gens)
            raise GenerationFailed(f"example {task.example_id(example)}: {gen.error} "
                                   f"({failed} of {len(gens)} rows failed)")
