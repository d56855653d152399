"""A task is data plus one module: ``<name>.yaml`` (this file's ``Task`` model) says what the
rows hold, how to prompt and which registered metrics score them; ``<name>.py`` says how its
rows are read and checked and how an answer is taken from a generation.

The module's optional hooks (a task defines only those it needs; the defaults are in
parentheses):

- ``read_file(path, field_map) -> rows | None``: a format of its own, e.g. JSQuAD JSON or
  M-IFEval JSONL (None: the generic JSONL/Parquet/CSV reader).
- ``decode(example, where) -> set[str]``: decode the row's non-text fields in place (a CSV
  cell is always text) and check them; returns the names of the fields that are not text
  (every field must be text).
- ``reference(example)``: what the metrics compare with (the single reference field).
- ``answer(output, example) -> str``: the answer a parsed generation gives (the output).
- ``details(answer, example) -> dict``: extra per-row columns (none).
- ``aggregate(rows) -> dict``: split-level metrics (the mean of each metric's row values).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from pydantic.dataclasses import dataclass

from promptsearch.pipelines.contract import Contract, describe_error, validate_contract
from promptsearch.pipelines.data.readers import read_yaml
from promptsearch.pipelines.engine.sampling import Sampling
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.prompting.render import template_fields

TASK_DIR = Path(__file__).parent

_Name = Annotated[StrictStr, Field(min_length=1)]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class PromptTemplate:
    """How to show one example; a prompt is instruction + demos + the query example.

    ``chat`` templates become messages: the instruction is the system message and each demo
    a user/assistant turn. Text templates are one string; they may still be sent through the
    model's chat template as a single user message (``PromptConfig.chat``). In a YAML file a
    template is a mapping under its name (every field but ``name``).
    """

    name: _Name = Field(description="The template's name (its key in the YAML mapping).")
    example: _Name = Field(description="Jinja over the task's input fields: the part of a "
                                       "prompt before the answer (required, non-empty).")
    answer: StrictStr = Field(default="", description="Jinja over a few-shot example: the "
                                                      "answer shown after `example` in a demo.")
    instruction: StrictStr = Field(default="", description="Text before the demos (the system "
                                                           "message of a chat template).")
    separator: StrictStr = Field(default="\n\n", description="Between the instruction, the "
                                                             "demos and the query.")
    chat: StrictBool = Field(default=False, description="Send as chat messages (needs a model "
                                                        "with a chat template).")
    version: Annotated[StrictInt, Field(ge=1)] = Field(
        default=1, description="Raise it when the text changes: a best.yaml made with another "
                               "version is refused.")
    description: StrictStr = Field(default="", description="One line for `promptsearch tasks`.")

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any], *, where: str) -> PromptTemplate:
        """A template from YAML; an error names ``where``, the template and the field."""
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: template {name!r} must be a mapping with at least "
                            "'example'")
        if "name" in data:
            raise UserError(f"{where}: template {name!r}: 'name' is the template's key, not a "
                            "field; remove it")
        try:
            return cls(name=name, **dict(data))
        except ValidationError as exc:
            raise UserError(_template_error(exc, name, where)) from None
        except TypeError as exc:  # an unexpected keyword, before pydantic sees it
            raise UserError(f"{where}: template {name!r}: {exc}") from None

    def fields(self) -> set[str]:
        """Input fields the query part reads (demo answers may read reference fields)."""
        return template_fields(self.example, name=f"template {self.name}")

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


_TEMPLATE_FIELDS = ("example", "answer", "instruction", "separator", "chat", "version",
                    "description")


def _template_error(exc: ValidationError, name: str, where: str) -> str:
    error = exc.errors()[0]
    if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        return (f"{where}: template {name!r} has unknown field {error['loc'][-1]!r}; "
                f"allowed: {', '.join(sorted(_TEMPLATE_FIELDS))}")
    return describe_error(exc, where=f"{where}: template {name!r}")


class Task(Contract):
    """A task's YAML file, ``pipelines/tasks/<name>.yaml``."""

    name: _Name
    """The task's name: the YAML's file name and the name of its Python module."""
    version: Annotated[StrictInt, Field(ge=1)]
    """Raise it when the task's fields, parsing or scoring change."""
    description: StrictStr
    """One line shown by ``promptsearch tasks``."""
    id_field: _Name
    """The field holding each row's unique id."""
    input_fields: tuple[_Name, ...] = Field(min_length=1)
    """Fields a prompt may show; a template reading any other field is refused."""
    reference_fields: tuple[_Name, ...]
    """Fields the metrics compare with; validation and few-shot rows need them, test rows
    may lack them (then the test split is not scored)."""
    metrics: tuple[_Name, ...] = Field(min_length=1)
    """Registered metric names (``pipelines/metrics``), computed for every row."""
    primary_metric: _Name
    """The metric a search maximises unless ``run --metric`` names another; one of
    ``metrics``."""
    answer_field: _Name
    """The field a few-shot demo shows as its answer; rows without it are not demos."""
    sampling: Sampling
    """Default decoding (the baseline's)."""
    parse: tuple[_Name, ...] = ()
    """Default parse steps (``pipelines/prompting/parsing.py``), applied in order to an
    output."""
    split_group: _Name | None = None
    """When one file is split into few-shot / validation / test, rows sharing this field's
    value stay in one split (a JSQuAD ``title`` always groups)."""
    templates: dict[str, PromptTemplate] = Field(min_length=1)
    """Built-in prompt templates by name; the first is the baseline's."""

    @property
    def module(self) -> ModuleType:
        """The task's read/check/answer code: ``pipelines/tasks/<name>.py``."""
        return importlib.import_module(f"promptsearch.pipelines.tasks.{self.name}")

    def _hook(self, name: str) -> Any:
        return getattr(self.module, name, None)

    def metric(self, name: str, *, where: str = "--metric") -> str:
        """``name`` if it is one of this task's metrics; else one line listing them."""
        if name not in self.metrics:
            raise UserError(f"{where} {name}: task {self.name} has no such metric; its "
                            f"metrics: {', '.join(self.metrics)}")
        return name

    def read_file(self, path: Path, field_map: Mapping[str, str] | None
                  ) -> list[dict[str, Any]] | None:
        """Rows of a file in a format only this task reads, or None for the generic reader."""
        hook = self._hook("read_file")
        return None if hook is None else hook(path, field_map)

    def decode(self, example: dict[str, Any], where: str) -> set[str]:
        """Decode and check the row's non-text fields in place; their names."""
        hook = self._hook("decode")
        return set() if hook is None else set(hook(example, where))

    def reference(self, example: Mapping[str, Any]) -> Any:
        """What the metrics compare an answer with."""
        hook = self._hook("reference")
        if hook is not None:
            return hook(example)
        if len(self.reference_fields) != 1:
            raise TypeError(f"task {self.name}: several reference fields; its module must "
                            "define reference(example)")
        return example[self.reference_fields[0]]

    def answer(self, output: str, example: Mapping[str, Any]) -> str:
        """The answer a parsed generation gives (for most tasks, the output itself)."""
        hook = self._hook("answer")
        return output if hook is None else hook(output, example)

    def read_answer(self, text: str, steps: Sequence[str], example: Mapping[str, Any]) -> str:
        """A generation's answer: the parse steps, then the task's ``answer`` hook."""
        from promptsearch.pipelines.prompting.parsing import parse_output

        return self.answer(parse_output(text, steps), example)

    def score_row(self, output: str, example: Mapping[str, Any]) -> dict[str, Any]:
        """Every metric of the task for one row (values x100), plus the task's details."""
        from promptsearch.pipelines.metrics import METRICS

        answer = self.answer(output, example)
        reference = self.reference(example)
        row: dict[str, Any] = {m: METRICS[m].score(answer, reference) for m in self.metrics}
        details = self._hook("details")
        if details is not None:
            row.update(details(answer, example))
        return row

    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Split-level metrics; the mean of per-row values unless the module says otherwise."""
        custom = self._hook("aggregate")
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
    """``path`` as a ``Task``; every error is one line naming the file and the field."""
    from promptsearch.pipelines.metrics import METRICS
    from promptsearch.pipelines.prompting.parsing import check_parse_steps

    where = str(path)
    data = read_yaml(path)
    if isinstance(data, Mapping) and isinstance(data.get("templates"), Mapping):
        data = {**data, "templates": {
            name: PromptTemplate.from_dict(name, spec, where=where)
            for name, spec in data["templates"].items()}}
    task = validate_contract(Task, data, where=where)
    if task.name != path.stem:
        raise UserError(f"{where}: name {task.name!r} must be the file's name {path.stem!r} "
                        "(the task's module is found by it)")
    for name in task.metrics:
        if name not in METRICS:
            raise UserError(f"{where}: metrics: unknown metric {name!r}; registered: "
                            f"{', '.join(METRICS)}")
    if task.primary_metric not in task.metrics:
        raise UserError(f"{where}: primary_metric {task.primary_metric!r} is not in metrics")
    check_parse_steps(task.parse, where=f"{where}: parse")
    for template in task.templates.values():
        unknown = template.fields() - set(task.input_fields)
        if unknown:
            raise UserError(f"{where}: template {template.name!r} reads unknown field "
                            f"{sorted(unknown)[0]!r}; input fields: {', '.join(task.input_fields)}")
    return task
