"""Render, generate, parse, score: one configuration over one set of examples."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from promptsearch.pipelines.config import PromptConfig
from promptsearch.pipelines.engine import Generation
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.parsing import parse_output
from promptsearch.pipelines.pool import EnginePool, Progress
from promptsearch.pipelines.prompts import render_requests
from promptsearch.pipelines.tasks import Task

Example = Mapping[str, Any]


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
             progress: Progress | None = None) -> EvalResult:
    return evaluate_many(task, [EvalJob(config, examples)], pool=pool, fewshot=fewshot,
                         progress=progress)[0]


def evaluate_many(task: Task, jobs: Sequence[EvalJob], *, pool: EnginePool,
                  fewshot: Sequence[Example], progress: Progress | None = None,
                  ) -> list[EvalResult]:
    """Several configurations in one call to the pool, so the engines batch them together
    (the final run: best on validation and test, baseline on test)."""
    start = time.perf_counter()
    requests, samplings = _render(task, jobs, fewshot)
    gens = pool.generate(requests, samplings, progress=progress)
    return _results(task, jobs, gens, time.perf_counter() - start)


async def evaluate_many_async(task: Task, jobs: Sequence[EvalJob], *, pool: EnginePool,
                              fewshot: Sequence[Example]) -> list[EvalResult]:
    start = time.perf_counter()
    requests, samplings = _render(task, jobs, fewshot)
    gens = await pool.generate_async(requests, samplings)
    return _results(task, jobs, gens, time.perf_counter() - start)


def _render(task: Task, jobs: Sequence[EvalJob],
            fewshot: Sequence[Example]) -> tuple[list[Any], list[Any]]:
    requests, samplings = [], []
    for job in jobs:
        rendered = render_requests(task, job.config, job.examples, fewshot)
        requests += rendered
        samplings += [job.config.sampling] * len(rendered)
    return requests, samplings


def _results(task: Task, jobs: Sequence[EvalJob], gens: Sequence[Generation],
             seconds: float) -> list[EvalResult]:
    results, start = [], 0
    for job in jobs:
        part = gens[start:start + len(job.examples)]
        start += len(job.examples)
        results.append(_result(task, job.config, job.examples, part, seconds))
    return results


def _result(task: Task, config: PromptConfig, examples: Sequence[Example],
            gens: Sequence[Generation], seconds: float) -> EvalResult:
    _raise_on_failed_rows(task, examples, gens)
    outputs = [parse_output(g.text, config.parse) for g in gens]
    rows = []
    for example, gen, output in zip(examples, gens, outputs, strict=True):
        rows.append({"id": task.example_id(example),
                     **{f: example.get(f) for f in task.input_fields},
                     "output": output, "raw_output": gen.text,
                     "prompt_tokens": gen.prompt_tokens, "output_tokens": gen.output_tokens,
                     "finish_reason": gen.finish_reason})
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
