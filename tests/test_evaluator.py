"""The search's evaluator: caching logic on a scripted pool (no engine; the real engine runs
it in tests/test_search*.py and tests/test_faults.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import cloudpickle

from promptsearch.pipelines.data.taskdata import load_task_data
from promptsearch.pipelines.engine.actor import Generation
from promptsearch.pipelines.prompting.config import PromptConfig
from promptsearch.pipelines.prompting.prompts import demo_pool
from promptsearch.pipelines.tasks import load_task
from promptsearch.search.evaluator import TrialEvaluator
from promptsearch.search.space import SearchSpace
from promptsearch.search.trial import validation_chunks


class ScriptedPool:
    """Answers every request after a pause, differently on every call: a row generated
    twice would not be the same row."""

    tokenizer = None

    def __init__(self) -> None:
        self.calls = 0

    async def generate_async(self, requests: list[Any], sampling: Any) -> list[Generation]:
        self.calls += 1
        call = self.calls
        await asyncio.sleep(0.2)
        return [Generation(f"answer {call}", 10, 2, "stop", 0.2) for _ in requests]


def _evaluator(tmp_path: Path) -> tuple[TrialEvaluator, dict[str, Any]]:
    task = load_task("qa")
    data = load_task_data(task, None, seed=0)
    space = SearchSpace.load(task)
    inputs = ("qa", space, validation_chunks(data.validation, 2),
              demo_pool(task, data.fewshot), ScriptedPool(), None, None, None)
    path = tmp_path / "inputs.pkl"
    path.write_bytes(cloudpickle.dumps(inputs))
    return TrialEvaluator(str(path)), space.params_of(PromptConfig.baseline(task))


def test_a_chunk_in_flight_is_awaited_not_generated_again(tmp_path: Path) -> None:
    """A trial retried while its first attempt's chunks are still generating gets that
    generation, so its score is the one the cache (and a --resume) will give."""
    evaluator, params = _evaluator(tmp_path)

    async def scenario() -> tuple[Any, Any]:
        first = asyncio.ensure_future(evaluator.evaluate(params, 1, 2))
        await asyncio.sleep(0.05)  # the first attempt's batch is in the pool
        second = await evaluator.evaluate(params, 1, 2)
        return await first, second

    first, second = asyncio.run(scenario())
    assert evaluator.pool.calls == 1
    assert first == second
    assert [r["generations"] for r in second] == [r["generations"] for r in first] != [0, 0]


def test_a_finished_chunk_is_kept(tmp_path: Path) -> None:
    evaluator, params = _evaluator(tmp_path)
    asyncio.run(evaluator.evaluate(params, 1, 1))
    reports = asyncio.run(evaluator.evaluate(params, 2, 2))
    assert evaluator.pool.calls == 2  # chunk 1 kept, chunk 2 generated
    assert [r["chunk"] for r in reports] == [2]
