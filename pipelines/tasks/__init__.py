"""The three competition tasks, each a YAML file plus a small parse-and-score module."""

from __future__ import annotations

from functools import cache

from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.tasks.task import TASK_DIR, PromptTemplate, Task, load_task_file

TASK_NAMES = ("qa", "summary", "instruct")


@cache
def load_task(name: str) -> Task:
    if name not in TASK_NAMES:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    return load_task_file(TASK_DIR / f"{name}.yaml")


__all__ = ["TASK_NAMES", "PromptTemplate", "Task", "load_task"]
