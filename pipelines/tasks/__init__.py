"""The tasks, each a YAML file (``Task``) plus a small module of the same name.

Adding a task: ``<name>.yaml``, ``<name>.py``, ``<name>.space.yaml`` and ``data/<name>/``
(``fewshot``, ``validation`` and ``test`` files), then its name in ``TASK_NAMES``.
"""

from __future__ import annotations

from functools import cache

from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.tasks.task import TASK_DIR, PromptTemplate, Task, load_task_file

TASK_NAMES = ("qa", "summary", "instruct", "choice", "open")
"""Every task, in the order ``promptsearch tasks`` lists them."""


@cache
def load_task(name: str) -> Task:
    if name not in TASK_NAMES:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    return load_task_file(TASK_DIR / f"{name}.yaml")


__all__ = ["TASK_DIR", "TASK_NAMES", "PromptTemplate", "Task", "load_task"]
