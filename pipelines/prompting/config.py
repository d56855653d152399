"""``PromptConfig``: one point of the search space; what ``best.yaml`` holds and ``eval`` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, InstanceOf, StrictBool, StrictInt, StrictStr, field_validator

from promptsearch.pipelines.contract import Contract, check_known, validate_contract
from promptsearch.pipelines.engine.sampling import Sampling
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.prompting.fewshot import ORDERS, SELECTORS
from promptsearch.pipelines.prompting.parsing import PARSERS
from promptsearch.pipelines.tasks import PromptTemplate, Task, load_task


class FewShot(Contract):
    """Which solved examples are shown before the query (the ``fewshot`` mapping)."""

    k: Annotated[StrictInt, Field(ge=0)] = 0
    """Number of demos, >= 0; 0 is zero-shot."""
    selector: StrictStr = "first"
    """``first``, ``random`` (one seeded set) or ``similar`` (BM25 over character bigrams)."""
    order: StrictStr = "as_selected"
    """``as_selected`` or ``reversed`` (for ``similar``: the closest demo last)."""
    seed: StrictInt = 0
    """Seed of the ``random`` selector."""

    @field_validator("selector")
    @classmethod
    def _known_selector(cls, value: str) -> str:
        check_known([value], SELECTORS)
        return value

    @field_validator("order")
    @classmethod
    def _known_order(cls, value: str) -> str:
        check_known([value], ORDERS)
        return value


class PromptConfig(Contract):
    """One point of the search space: template, demos, decoding and parsing."""

    task: StrictStr
    """Task name (``promptsearch tasks`` lists them)."""
    template: StrictStr
    """Name of one of the task's templates, or of ``custom_template``."""
    fewshot: FewShot = FewShot()
    """Few-shot demos; absent means zero-shot."""
    sampling: Sampling = Sampling()
    """Decoding parameters; fields left out take the task's defaults."""
    parse: tuple[StrictStr, ...] = ()
    """Parse steps applied in order to a generation (names from ``pipelines/prompting/parsing.py``:
    strip, first_line, strip_prefix, until_period, strip_quotes); absent means the task's."""
    chat: StrictBool = False
    """Send a text template's prompt as one user message through the model's chat template."""
    custom_template: InstanceOf[PromptTemplate] | None = None
    """A user-supplied template (from a search space), saved inside the config itself."""

    @field_validator("parse")
    @classmethod
    def _known_steps(cls, steps: tuple[str, ...]) -> tuple[str, ...]:
        check_known(steps, PARSERS)
        return steps

    def template_of(self, task: Task) -> PromptTemplate:
        if self.custom_template is not None:
            return self.custom_template
        return task.template(self.template)

    @classmethod
    def baseline(cls, task: Task) -> PromptConfig:
        """What a practitioner tries first: the task's first template, zero-shot, defaults."""
        return cls(task=task.name, template=next(iter(task.templates)),
                   sampling=task.sampling, parse=task.parse)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "template": self.template}
        if self.custom_template is None:  # a custom template carries its own version
            out["template_version"] = load_task(self.task).template(self.template).version
        out.update({"fewshot": self.fewshot.model_dump(), "sampling": self.sampling.to_dict(),
                    "parse": list(self.parse), "chat": self.chat})
        if self.custom_template is not None:
            spec = _template_dict(self.custom_template)
            del spec["name"]
            out["custom_template"] = spec
        return out

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "config") -> PromptConfig:
        """A ``best.yaml``'s content, checked against its task (template, version, fields)."""
        saved = validate_contract(PromptConfigFile, data, where=where)
        try:
            task = load_task(saved.task)
        except UserError as exc:
            raise UserError(f"{where}: field 'task': {exc}") from None
        given = saved.model_fields_set
        sampling = task.sampling
        if "sampling" in given:
            sampling = Sampling(**{**task.sampling.to_dict(),
                                   **{name: getattr(saved.sampling, name)
                                      for name in saved.sampling.model_fields_set}})
        custom = saved.custom_template
        config = cls(task=task.name, template=saved.template, fewshot=saved.fewshot,
                     sampling=sampling, parse=saved.parse if "parse" in given else task.parse,
                     chat=saved.chat,
                     custom_template=None if custom is None else PromptTemplate.from_dict(
                         saved.template, custom, where=f"{where}: custom_template"))
        config.check(task, where=where)
        if custom is None and saved.template_version is not None:
            version = task.template(config.template).version
            if saved.template_version != version:
                raise UserError(
                    f"{where}: template {config.template!r} was version "
                    f"{saved.template_version!r} when this config was made; this promptsearch "
                    f"has version {version}, whose text differs. Run the search again, or set "
                    f"template_version: {version} to accept the new text")
        return config

    @classmethod
    def load(cls, path: str | Path) -> PromptConfig:
        from promptsearch.pipelines.data.readers import read_yaml

        return cls.from_dict(read_yaml(path), where=str(path))

    def save(self, path: str | Path) -> None:
        import yaml

        from promptsearch.pipelines.data.writers import write_text

        write_text(path, yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False))

    def check(self, task: Task, *, where: str = "config", pool_size: int | None = None,
              has_chat_template: bool | None = None) -> None:
        """Reject what the model alone cannot: names and sizes that depend on the task, the
        data or the model."""
        template = self.template_of(task)
        if self.custom_template is not None:
            check_template(template, task, where=f"{where}: custom_template")
        k = self.fewshot.k
        if pool_size is not None and k > pool_size:
            raise UserError(f"{where}: fewshot.k={k} but the few-shot pool has only "
                            f"{pool_size} examples with answers")
        if has_chat_template is False and (template.chat or self.chat):
            raise UserError(f"{where}: template {self.template!r} / chat needs a model with a "
                            "chat template; this model has none (use a text template)")

    def replace(self, **changes: Any) -> PromptConfig:
        """A copy with ``changes``, validated like a new one."""
        return type(self)(**{**dict(self), **changes})


class PromptConfigFile(PromptConfig):
    """A prompt configuration as saved (``best.yaml``, ``baseline.yaml``, ``eval --config``).

    Written by ``promptsearch run``; may be written by hand: only ``task`` and ``template``
    are required, and the other fields default to the task's own settings.
    """

    template_version: StrictInt | None = None
    """Version of the task's built-in template when the config was made; a config made with
    another version is refused rather than run with the new text. Absent for a custom
    template (it carries its own text)."""
    custom_template: dict[StrictStr, Any] | None = None  # type: ignore[assignment]
    """A user-supplied template, as in a search space's ``extra_templates`` (keys: example,
    answer, instruction, separator, chat, version, description); ``template`` is its name."""


def _template_dict(template: PromptTemplate) -> dict[str, Any]:
    """The template's fields, whatever kind of object the task module makes it."""
    dump = getattr(template, "model_dump", None)
    if dump is not None:
        return dict(dump())
    from dataclasses import asdict

    return asdict(template)


def check_template(template: PromptTemplate, task: Task, *, where: str) -> None:
    """A user's template must compile, stay out of Python internals and read only the task's
    input fields (its answer part may also read the references of a demo)."""
    from promptsearch.pipelines.prompting.render import compile_template

    compile_template(template.example, name=f"{where}: template {template.name!r}")
    unknown = template.fields() - set(task.input_fields)
    if unknown:
        raise UserError(f"{where}: template {template.name!r} reads unknown field "
                        f"{sorted(unknown)[0]!r}; input fields: {', '.join(task.input_fields)}")
    compile_template(template.answer, name=f"{where}: template {template.name!r} answer")
