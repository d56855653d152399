"""``render_prompt``: the one place an example becomes a prompt (search, eval, serve)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from promptsearch.pipelines.engine.pool import Request
from promptsearch.pipelines.prompting.config import PromptConfig
from promptsearch.pipelines.prompting.fewshot import select_demos
from promptsearch.pipelines.prompting.render import render_template
from promptsearch.pipelines.tasks import Task

Example = Mapping[str, Any]


def demo_pool(task: Task, fewshot: Sequence[Example]) -> list[Example]:
    """The few-shot examples that can be shown as demos: those that carry an answer."""
    return [e for e in fewshot if e.get(task.answer_field) not in (None, "", [])]


def render_prompt(task: Task, config: PromptConfig, example: Example,
                  demos: Sequence[Example] = ()) -> Request:
    template = config.template_of(task)
    name = f"template {template.ref}"
    query = render_template(template.example, example, name=name)
    shots = [(render_template(template.example, d, name=name),
              render_template(template.answer, d, name=name)) for d in demos]
    if template.chat:
        messages = [{"role": "system", "content": template.instruction}] \
            if template.instruction else []
        for question, answer in shots:
            messages += [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]
        return [*messages, {"role": "user", "content": query}]
    parts = [template.instruction] if template.instruction else []
    parts += [question + answer for question, answer in shots]
    text = template.separator.join([*parts, query])
    return [{"role": "user", "content": text}] if config.chat else text


def render_requests(task: Task, config: PromptConfig, examples: Sequence[Example],
                    fewshot: Sequence[Example]) -> list[Request]:
    """Prompts for every example, each with the demos the config's selector picks for it."""
    pool = demo_pool(task, fewshot)
    fs = config.fewshot
    return [render_prompt(task, config, example, select_demos(
        example, pool, k=fs.k, selector=fs.selector, order=fs.order, seed=fs.seed,
        fields=task.input_fields, id_field=task.id_field)) for example in examples]
