"""``output_row``: the one place a generation becomes an output row (the final run, ``eval``,
``generate`` and ``serve``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptsearch.pipelines.engine.actor import Generation
    from promptsearch.pipelines.prompting.config import PromptConfig
    from promptsearch.pipelines.tasks import Task


def output_row(example: Mapping[str, Any], gen: Generation, *, task: Task | None = None,
               config: PromptConfig | None = None) -> dict[str, Any]:
    """With a task and its configuration: the example's id and inputs, the parsed answer as
    ``output`` and the generation as ``raw_output``. Without (``generate`` over any table):
    the row's own columns, the generation as ``output``, its time and error."""
    counts = {"prompt_tokens": gen.prompt_tokens, "output_tokens": gen.output_tokens,
              "finish_reason": gen.finish_reason}
    if task is None or config is None:
        return {**example, "output": gen.text, **counts, "seconds": round(gen.seconds, 4),
                "error": gen.error}
    return {"id": task.example_id(example), **{f: example.get(f) for f in task.input_fields},
            "output": task.read_answer(gen.text, config.parse, example), "raw_output": gen.text,
            **counts}
