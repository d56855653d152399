"""A task is data: one flat YAML (fields, templates, metrics, defaults) plus a scoring module."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.readers import read_yaml
from promptsearch.pipelines.render import template_fields
from promptsearch.pipelines.sampling import Sampling

TASK_DIR = Path(__file__).parent


@dataclass(frozen=True)
class PromptTemplate:
    """How to show one example; a prompt is instruction + demos + the query example.

    ``chat`` templates become messages: the instruction is the system message and each demo
    a user/assistant turn. Text templates are one string; they may still be sent through the
    model's chat template as a single user message (``PromptConfig.chat``).
    """

    name: str
    example: str
    """Jinja over the task's input fields: the part before the answer."""
    answer: str = ""
    """Jinja over a few-shot example: the answer shown after ``example`` in a demo."""
    instruction: str = ""
    separator: str = "\n\n"
    chat: bool = False
    version: int = 1
    description: str = ""

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any], *, where: str) -> PromptTemplate:
        allowed = {"example", "answer", "instruction", "separator", "chat", "version",
                   "description"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise UserError(f"{where}: template {name!r} has unknown field {unknown[0]!r}; "
                            f"allowed: {', '.join(sorted(allowed))}")
        if not isinstance(data.get("example"), str) or not data["example"].strip():
            raise UserError(f"{where}: template {name!r} needs a non-empty 'example' text")
        return cls(name=name, **dict(data))

    def fields(self) -> set[str]:
        """Input fields the query part reads (demo answers may read reference fields)."""
        return template_fields(self.example, name=f"template {self.name}")

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


@dataclass(frozen=True)
class Task:
    name: str
    version: int
    description: str
    id_field: str
    input_fields: tuple[str, ...]
    reference_fields: tuple[str, ...]
    metrics: tuple[str, ...]
    primary_metric: str
    answer_field: str
    sampling: Sampling
    parse: tuple[str, ...]
    templates: dict[str, PromptTemplate] = field(default_factory=dict)

    @property
    def module(self) -> ModuleType:
        """The task's parse-and-score code, registered by the task's name."""
        return importlib.import_module(f"promptsearch.pipelines.tasks.{self.name}")

    @property
    def score_row(self) -> Callable[[str, Mapping[str, Any]], dict[str, Any]]:
        return self.module.score_row

    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Split-level metrics; the mean of per-row values unless the module says otherwise."""
        custom = getattr(self.module, "aggregate", None)
        if custom is not None:
            return custom(rows)
        if not rows:
            return dict.fromkeys(self.metrics, 0.0)
        return {m: sum(float(r[m]) for r in rows) / len(rows) for m in self.metrics}

    def template(self, name: str) -> PromptTemplate:
        try:
            return self.templates[name]
        except KeyError:
            raise UserError(f"task {self.name}: unknown template {name!r}; "
                            f"known: {', '.join(self.templates)}") from None

    def check_example(self, example: Mapping[str, Any], *, where: str,
                      references: bool = True) -> None:
        """Every row must carry the task's fields; the error names the row and the field."""
        needed = [self.id_field, *self.input_fields]
        if references:
            needed += list(self.reference_fields)
        for name in needed:
            if example.get(name) in (None, ""):
                raise UserError(f"{where}: missing field {name!r} (task {self.name} needs "
                                f"{', '.join(needed)})")

    def example_id(self, example: Mapping[str, Any]) -> str:
        return str(example[self.id_field])


def load_task_file(path: Path) -> Task:
    data = read_yaml(path)
    where = str(path)
    if not isinstance(data, dict):
        raise UserError(f"{where}: a task file must be a YAML mapping")
    try:
        templates = {name: PromptTemplate.from_dict(name, spec, where=where)
                     for name, spec in data.pop("templates").items()}
        task = Task(
            name=data["name"], version=int(data["version"]), description=data["description"],
            id_field=data["id_field"], input_fields=tuple(data["input_fields"]),
            reference_fields=tuple(data["reference_fields"]), metrics=tuple(data["metrics"]),
            primary_metric=data["primary_metric"], answer_field=data["answer_field"],
            sampling=Sampling.from_dict(data["sampling"], where=f"{where}: sampling"),
            parse=tuple(data["parse"]), templates=templates)
    except KeyError as exc:
        raise UserError(f"{where}: missing key {exc.args[0]!r}") from None
    if task.primary_metric not in task.metrics:
        raise UserError(f"{where}: primary_metric {task.primary_metric!r} is not in metrics")
    for template in templates.values():
        unknown = template.fields() - set(task.input_fields)
        if unknown:
            raise UserError(f"{where}: template {template.name!r} reads unknown field "
                            f"{sorted(unknown)[0]!r}; input fields: {', '.join(task.input_fields)}")
    return task
