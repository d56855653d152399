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
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, Field, StrictBool, StrictInt, StrictStr, field_validator

from promptsearch.pipelines.contract import Contract, check_known, load_contract
from promptsearch.pipelines.engine.sampling import (
    MaxTokens,
    RepetitionPenalty,
    Sampling,
    StopString,
    Temperature,
    TopP,
)
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.prompting.config import FewShot, PromptConfig, check_template
from promptsearch.pipelines.prompting.fewshot import ORDERS, SELECTORS
from promptsearch.pipelines.prompting.parsing import PARSERS
from promptsearch.pipelines.tasks import TASK_DIR, PromptTemplate, Task

T = TypeVar("T")


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


Choices = Annotated[tuple[T, ...], BeforeValidator(_as_list), Field(min_length=1)]
"""A categorical parameter: a list of values, or one value (fixed)."""


class SpaceFewShot(Contract):
    """The ``fewshot`` mapping of a search space: choices for each few-shot setting."""

    k: Choices[Annotated[StrictInt, Field(ge=0)]] = (0,)
    """Numbers of demos to try (integers >= 0)."""
    selector: Choices[StrictStr] = ("first",)
    """Selectors to try when k > 0: first, random, similar."""
    order: Choices[StrictStr] = ("as_selected",)
    """Demo orders to try when k > 0: as_selected, reversed."""
    seed: Choices[StrictInt] = (0,)
    """Seeds of the ``random`` selector to try."""

    @field_validator("selector")
    @classmethod
    def _known_selectors(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        check_known(values, SELECTORS)
        return values

    @field_validator("order")
    @classmethod
    def _known_orders(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        check_known(values, ORDERS)
        return values


class SpaceSampling(Contract):
    """The ``sampling`` mapping of a search space: choices for each decoding parameter, each
    under the same rules as a configuration's ``sampling``."""

    temperature: Choices[Temperature] = (0.0,)
    """Temperatures to try (>= 0; 0 is greedy)."""
    top_p: Choices[TopP] = (1.0,)
    """Nucleus masses to try when temperature > 0, each in (0, 1]."""
    max_tokens: Choices[MaxTokens] | None = None
    """Most tokens to generate (integers >= 1); absent means the task's default."""
    repetition_penalty: Choices[RepetitionPenalty] = (1.0,)
    """Repetition penalties to try (> 0)."""
    stop: dict[StrictStr, list[StopString]] | None = None
    """Named stop lists to try, e.g. ``{newline: ["\\n"], none: []}``; absent means the
    task's stop list."""
    seed: StrictInt | None = 0
    """Seed of every sampled request (temperature > 0); null for unseeded."""


class SpaceFile(Contract):
    """A search space: every parameter is a categorical choice. A list gives the values to
    try; a scalar is a fixed value."""

    templates: Choices[StrictStr] | None = None
    """Templates to try: the task's (``promptsearch tasks``) or ``extra_templates`` names;
    absent means every template of the task."""
    extra_templates: dict[StrictStr, dict[StrictStr, Any]] = Field(default_factory=dict)
    """Your own templates by name (keys: example, answer, instruction, separator, chat,
    version, description); list a name in ``templates`` to search it."""
    fewshot: SpaceFewShot = SpaceFewShot()
    """Few-shot choices; absent means zero-shot only."""
    sampling: SpaceSampling = SpaceSampling()
    """Decoding choices."""
    parse: dict[StrictStr, tuple[StrictStr, ...]] | None = None
    """Named parse-step lists to try (steps: strip, first_line, strip_prefix, until_period,
    strip_quotes); absent means the task's steps."""
    chat: Choices[StrictBool] = (False,)
    """Whether to send text templates through the model's chat template: [false], [true]
    or both."""

    @field_validator("parse")
    @classmethod
    def _known_steps(cls, named: dict[str, tuple[str, ...]] | None) -> Any:
        for steps in (named or {}).values():
            check_known(steps, PARSERS)
        return named


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
        where = str(path)
        data = load_contract(SpaceFile, path)
        shots, sampling = data.fewshot, data.sampling
        extra = {name: PromptTemplate.from_dict(name, spec, where=where)
                 for name, spec in data.extra_templates.items()}
        space = cls(
            templates=list(data.templates or task.templates),
            k=list(shots.k), selector=list(shots.selector), order=list(shots.order),
            demo_seed=list(shots.seed), temperature=list(sampling.temperature),
            top_p=list(sampling.top_p),
            max_tokens=list(sampling.max_tokens or [task.sampling.max_tokens]),
            repetition_penalty=list(sampling.repetition_penalty),
            stop=dict(sampling.stop or {"task": list(task.sampling.stop)}),
            parse={name: list(steps) for name, steps in
                   (data.parse or {"task": list(task.parse)}).items()},
            chat=list(data.chat), sampling_seed=sampling.seed, extra_templates=extra)
        space.check(task, where=where)
        return space

    def check(self, task: Task, *, where: str) -> None:
        """What the file's model cannot know: template names and fields of this task."""
        for name in self.templates:
            if name not in task.templates and name not in self.extra_templates:
                raise UserError(f"{where}: unknown template {name!r}; known: "
                                f"{', '.join([*task.templates, *self.extra_templates])}")
        for template in self.extra_templates.values():
            check_template(template, task, where=where)

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
