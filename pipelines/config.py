"""``PromptConfig``: one point of the search space; what ``best.yaml`` holds and ``eval`` reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.fewshot import ORDERS, SELECTORS
from promptsearch.pipelines.parsing import check_parse_steps
from promptsearch.pipelines.sampling import Sampling
from promptsearch.pipelines.tasks import PromptTemplate, Task, load_task


@dataclass(frozen=True)
class FewShot:
    k: int = 0
    """Number of demos."""
    selector: str = "first"
    """``first``, ``random`` (one seeded set) or ``similar`` (BM25 over character bigrams)."""
    order: str = "as_selected"
    """``as_selected`` or ``reversed`` (for ``similar``: the closest demo last)."""
    seed: int = 0


@dataclass(frozen=True)
class PromptConfig:
    task: str
    template: str
    fewshot: FewShot = field(default_factory=FewShot)
    sampling: Sampling = field(default_factory=Sampling)
    parse: tuple[str, ...] = ()
    chat: bool = False
    """Send a text template's prompt as one user message through the model's chat template."""
    custom_template: PromptTemplate | None = None
    """A user-supplied template (from a search space), saved inside the config itself."""

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
        out.update({"fewshot": asdict(self.fewshot), "sampling": self.sampling.to_dict(),
                    "parse": list(self.parse), "chat": self.chat})
        if self.custom_template is not None:
            spec = asdict(self.custom_template)
            del spec["name"]
            out["custom_template"] = spec
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> PromptConfig:
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: expected a mapping with task, template, fewshot, "
                            "sampling, parse")
        _no_unknown(data, {f.name for f in fields(cls)} | {"template_version"}, where)
        for key in ("task", "template"):
            if not isinstance(data.get(key), str):
                raise UserError(f"{where}: field {key!r} is required (a string)")
        try:
            task = load_task(data["task"])
        except UserError as exc:
            raise UserError(f"{where}: field 'task': {exc}") from None
        shots = data.get("fewshot") or {}
        _no_unknown(shots, {f.name for f in fields(FewShot)}, f"{where}: fewshot")
        try:
            fewshot = FewShot(**shots)
        except TypeError as exc:
            raise UserError(f"{where}: fewshot: {exc}") from None
        sampling = Sampling.from_dict({**task.sampling.to_dict(), **(data.get("sampling") or {})},
                                      where=f"{where}: sampling")
        custom = data.get("custom_template")
        config = cls(task=task.name, template=data["template"], fewshot=fewshot,
                     sampling=sampling, parse=tuple(data.get("parse", task.parse)),
                     chat=bool(data.get("chat", False)),
                     custom_template=None if custom is None else PromptTemplate.from_dict(
                         data["template"], custom, where=f"{where}: custom_template"))
        config.check(task, where=where)
        if custom is None and "template_version" in data:
            version = task.template(config.template).version
            if data["template_version"] != version:
                raise UserError(
                    f"{where}: template {config.template!r} was version "
                    f"{data['template_version']!r} when this config was made; this promptsearch "
                    f"has version {version}, whose text differs. Run the search again, or set "
                    f"template_version: {version} to accept the new text")
        return config

    @classmethod
    def load(cls, path: str | Path) -> PromptConfig:
        from promptsearch.pipelines.readers import read_yaml

        return cls.from_dict(read_yaml(path), where=str(path))

    def save(self, path: str | Path) -> None:
        import yaml

        from promptsearch.pipelines.writers import write_text

        write_text(path, yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False))

    def check(self, task: Task, *, where: str = "config", pool_size: int | None = None,
              has_chat_template: bool | None = None) -> None:
        """Reject what cannot run, before anything runs."""
        template = self.template_of(task)
        if self.custom_template is not None:
            check_template(template, task, where=f"{where}: custom_template")
        fs = self.fewshot
        if not isinstance(fs.k, int) or fs.k < 0:
            raise UserError(f"{where}: fewshot.k must be an integer >= 0, got {fs.k!r}")
        if fs.selector not in SELECTORS:
            raise UserError(f"{where}: unknown fewshot.selector {fs.selector!r}; "
                            f"known: {', '.join(SELECTORS)}")
        if fs.order not in ORDERS:
            raise UserError(f"{where}: unknown fewshot.order {fs.order!r}; known: "
                            f"{', '.join(ORDERS)}")
        if pool_size is not None and fs.k > pool_size:
            raise UserError(f"{where}: fewshot.k={fs.k} but the few-shot pool has only "
                            f"{pool_size} examples with answers")
        check_parse_steps(self.parse, where=where)
        if has_chat_template is False and (template.chat or self.chat):
            raise UserError(f"{where}: template {self.template!r} / chat needs a model with a "
                            "chat template; this model has none (use a text template)")

    def replace(self, **changes: Any) -> PromptConfig:
        return replace(self, **changes)


def _no_unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]!r}; allowed: "
                        f"{', '.join(sorted(known))}")


def check_template(template: PromptTemplate, task: Task, *, where: str) -> None:
    """A user's template must compile, stay out of Python internals and read only the task's
    input fields (its answer part may also read the references of a demo)."""
    from promptsearch.pipelines.render import compile_template

    compile_template(template.example, name=f"{where}: template {template.name!r}")
    unknown = template.fields() - set(task.input_fields)
    if unknown:
        raise UserError(f"{where}: template {template.name!r} reads unknown field "
                        f"{sorted(unknown)[0]!r}; input fields: {', '.join(task.input_fields)}")
    compile_template(template.answer, name=f"{where}: template {template.name!r} answer")
