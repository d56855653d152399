"""The search space: data in YAML, turned into Optuna suggestions and back into a PromptConfig.

Every parameter is a categorical choice (a scalar in the YAML is a fixed value). Parameters that
only matter in some configurations are suggested only there, so TPE does not learn from noise:
the few-shot selector, order and seed only when ``k > 0``, the demo seed only for ``random``,
``top_p`` only when ``temperature > 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from promptsearch.pipelines.config import FewShot, PromptConfig, check_template
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.fewshot import ORDERS, SELECTORS
from promptsearch.pipelines.parsing import check_parse_steps
from promptsearch.pipelines.readers import read_yaml
from promptsearch.pipelines.sampling import Sampling
from promptsearch.pipelines.tasks import TASK_DIR, PromptTemplate, Task


def _choices(value: Any, where: str) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise UserError(f"{where}: needs at least one value")
    return values


@dataclass(frozen=True)
class SearchSpace:
    templates: list[str]
    k: list[int]
    selector: list[str]
    order: list[str]
    demo_seed: list[int]
    temperature: list[float]
    top_p: list[float]
    max_tokens: list[int]
    repetition_penalty: list[float]
    stop: dict[str, list[str]]
    parse: dict[str, list[str]]
    chat: list[bool]
    sampling_seed: int | None = 0
    extra_templates: dict[str, PromptTemplate] = field(default_factory=dict)

    @classmethod
    def load(cls, task: Task, path: str | Path | None = None) -> SearchSpace:
        """The task's default space, or a user's ``--space`` file."""
        path = Path(path) if path else TASK_DIR / f"{task.name}.space.yaml"
        data = read_yaml(path)
        where = str(path)
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: a search space must be a YAML mapping")
        known = {"templates", "extra_templates", "fewshot", "sampling", "parse", "chat"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r}; allowed: "
                            f"{', '.join(sorted(known))}")
        shots, sampling = data.get("fewshot") or {}, data.get("sampling") or {}
        extra = {name: PromptTemplate.from_dict(name, spec, where=where)
                 for name, spec in (data.get("extra_templates") or {}).items()}
        space = cls(
            templates=_choices(data.get("templates", list(task.templates)), f"{where}: templates"),
            k=_choices(shots.get("k", 0), f"{where}: fewshot.k"),
            selector=_choices(shots.get("selector", "first"), f"{where}: fewshot.selector"),
            order=_choices(shots.get("order", "as_selected"), f"{where}: fewshot.order"),
            demo_seed=_choices(shots.get("seed", 0), f"{where}: fewshot.seed"),
            temperature=_choices(sampling.get("temperature", 0.0), f"{where}: temperature"),
            top_p=_choices(sampling.get("top_p", 1.0), f"{where}: top_p"),
            max_tokens=_choices(sampling.get("max_tokens", task.sampling.max_tokens),
                                f"{where}: max_tokens"),
            repetition_penalty=_choices(sampling.get("repetition_penalty", 1.0),
                                        f"{where}: repetition_penalty"),
            stop=dict(sampling.get("stop") or {"task": list(task.sampling.stop)}),
            parse=dict(data.get("parse") or {"task": list(task.parse)}),
            chat=_choices(data.get("chat", False), f"{where}: chat"),
            sampling_seed=sampling.get("seed", 0),
            extra_templates=extra)
        space.check(task, where=where)
        return space

    def check(self, task: Task, *, where: str) -> None:
        """Reject names that do not exist and values out of range, before any trial."""
        for name in self.templates:
            if name not in task.templates and name not in self.extra_templates:
                raise UserError(f"{where}: unknown template {name!r}; known: "
                                f"{', '.join([*task.templates, *self.extra_templates])}")
        for template in self.extra_templates.values():
            check_template(template, task, where=where)
        for k in self.k:
            if not isinstance(k, int) or k < 0:
                raise UserError(f"{where}: fewshot.k values must be integers >= 0, got {k!r}")
        for value, allowed, label in ((self.selector, SELECTORS, "fewshot.selector"),
                                      (self.order, ORDERS, "fewshot.order")):
            bad = [v for v in value if v not in allowed]
            if bad:
                raise UserError(f"{where}: unknown {label} {bad[0]!r}; known: "
                                f"{', '.join(allowed)}")
        for steps in self.parse.values():
            check_parse_steps(steps, where=f"{where}: parse")
        for t in self.temperature:
            for p in self.top_p:
                for m in self.max_tokens:
                    for r in self.repetition_penalty:
                        for stops in self.stop.values():
                            Sampling.from_dict({"temperature": t, "top_p": p, "max_tokens": m,
                                                "repetition_penalty": r, "stop": stops},
                                               where=f"{where}: sampling")

    def template(self, task: Task, name: str) -> PromptTemplate:
        return self.extra_templates.get(name) or task.template(name)

    def without_chat(self, task: Task) -> SearchSpace:
        """The space for a model without a chat template: chat templates and chat=True go."""
        templates = [t for t in self.templates if not self.template(task, t).chat]
        if not templates:
            raise UserError("every template in the space needs a chat template, and this "
                            "model has none; add a text template to the space")
        return replace(self, templates=templates, chat=[False])

    def size(self) -> int:
        """How many distinct configurations the space holds (conditional parameters counted
        only where they act, as ``suggest`` asks for them)."""
        shots = sum(1 if k == 0 else sum(
            len(set(self.order)) * (len(set(self.demo_seed)) if sel == "random" else 1)
            for sel in set(self.selector)) for k in set(self.k))
        decoding = sum(len(set(self.top_p)) if t > 0 else 1 for t in set(self.temperature))
        return (len(set(self.templates)) * shots * decoding * len(set(self.max_tokens))
                * len(set(self.repetition_penalty)) * len(self.stop) * len(self.parse)
                * len(set(self.chat)))

    # -- Optuna ---------------------------------------------------------------------------
    def suggest(self, trial: Any) -> None:
        """Define-by-run space for OptunaSearch; conditional parameters only where they act."""
        trial.suggest_categorical("template", self.templates)
        k = trial.suggest_categorical("k", self.k)
        if k > 0:
            selector = trial.suggest_categorical("selector", self.selector)
            trial.suggest_categorical("order", self.order)
            if selector == "random":
                trial.suggest_categorical("demo_seed", self.demo_seed)
        temperature = trial.suggest_categorical("temperature", self.temperature)
        if temperature > 0:
            trial.suggest_categorical("top_p", self.top_p)
        trial.suggest_categorical("max_tokens", self.max_tokens)
        trial.suggest_categorical("repetition_penalty", self.repetition_penalty)
        trial.suggest_categorical("stop", list(self.stop))
        trial.suggest_categorical("parse", list(self.parse))
        trial.suggest_categorical("chat", self.chat)

    def to_config(self, task: Task, params: Mapping[str, Any]) -> PromptConfig:
        temperature = params.get("temperature", 0.0)
        k = params.get("k", 0)
        sampling = Sampling(temperature=temperature,
                            top_p=params.get("top_p", 1.0) if temperature > 0 else 1.0,
                            max_tokens=params["max_tokens"],
                            repetition_penalty=params["repetition_penalty"],
                            stop=tuple(self.stop[params["stop"]]),
                            seed=self.sampling_seed if temperature > 0 else None)
        fewshot = FewShot(k=k, selector=params.get("selector", "first") if k else "first",
                          order=params.get("order", "as_selected") if k else "as_selected",
                          seed=params.get("demo_seed", 0) if params.get("selector") == "random"
                          else 0)
        name = params["template"]
        return PromptConfig(task=task.name, template=name, fewshot=fewshot, sampling=sampling,
                            parse=tuple(self.parse[params["parse"]]), chat=params["chat"],
                            custom_template=self.extra_templates.get(name))

    def params_of(self, config: PromptConfig) -> dict[str, Any]:
        """The Optuna parameters that give ``config`` (to enqueue the baseline first)."""
        params: dict[str, Any] = {"template": config.template, "k": config.fewshot.k}
        if config.fewshot.k:
            params.update(selector=config.fewshot.selector, order=config.fewshot.order)
            if config.fewshot.selector == "random":
                params["demo_seed"] = config.fewshot.seed
        s = config.sampling
        params["temperature"] = s.temperature
        if s.temperature > 0:
            params["top_p"] = s.top_p
        params.update(max_tokens=s.max_tokens, repetition_penalty=s.repetition_penalty,
                      stop=_name_of(self.stop, list(s.stop), "stop"),
                      parse=_name_of(self.parse, list(config.parse), "parse"), chat=config.chat)
        for key, value in params.items():
            allowed = {"template": self.templates, "k": self.k, "selector": self.selector,
                       "order": self.order, "demo_seed": self.demo_seed,
                       "temperature": self.temperature, "top_p": self.top_p,
                       "max_tokens": self.max_tokens,
                       "repetition_penalty": self.repetition_penalty,
                       "chat": self.chat}.get(key)
            if allowed is not None and value not in allowed:
                raise UserError(f"search space: the baseline's {key}={value!r} is not among "
                                f"the choices {allowed}; add it so the baseline runs first")
        return params


def _name_of(named: Mapping[str, list[str]], value: list[str], label: str) -> str:
    for name, choice in named.items():
        if list(choice) == value:
            return name
    raise UserError(f"search space: the baseline's {label} {value!r} is not among the choices "
                    f"{dict(named)}; add it so the baseline runs first")
