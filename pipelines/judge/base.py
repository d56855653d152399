"""What every judge does: answer a batch of ``JudgePrompt``s; grading and retrying on top."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.judge.parse import parse_grade
from promptsearch.pipelines.judge.prompts import JUDGE_PROMPT_VERSION, JudgePrompt, grade_prompt


class JudgeError(UserError):
    """The judge cannot be used (refused connection, rejected request, no grade at all)."""


@dataclass(frozen=True)
class JudgeReply:
    """The judge's text for one prompt (``prefix`` already in front for text prompts)."""

    text: str
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached: bool = False
    error: str | None = None
    """Why this one prompt got no reply (too long for the judge's context, ...)."""


@dataclass
class JudgeCost:
    """What judging cost: calls made (cache hits apart), tokens and wall time."""

    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0

    def add(self, other: JudgeCost) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 2)
        return out


@dataclass(frozen=True)
class Grade:
    """One answer's grade: ``value`` is None when the judge gave no parsable grade."""

    value: int | None
    reply: str
    retried: bool = False
    error: str | None = None


@dataclass(frozen=True)
class GradeItem:
    question: str
    reference: str
    eval_aspect: str
    answer: str


class Judge(ABC):
    """A model that answers judge prompts; subclasses say how the model is reached."""

    kind: str = ""
    """``engine`` (promptsearch's own engines) or ``http`` (an OpenAI-compatible server)."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The judge's model, as reports show it."""

    @abstractmethod
    async def complete(self, prompts: Sequence[JudgePrompt]) -> list[JudgeReply]:
        """One reply per prompt, greedy; raises ``JudgeError`` when the judge is unreachable."""

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "kind": self.kind, "prompt_version": JUDGE_PROMPT_VERSION}


async def ask(judge: Judge, prompts: Sequence[JudgePrompt], parse: Callable[[str], Any],
              ) -> tuple[list[tuple[Any, str, bool, str | None]], JudgeCost]:
    """Every prompt once; the ones whose reply does not parse once more (one call for all),
    with the reply and a reminder of the form. (parsed or None, reply, retried, error) each."""
    start = time.perf_counter()
    cost = JudgeCost()
    first = await judge.complete(prompts)
    _count(cost, first)
    results: list[tuple[Any, str, bool, str | None]] = [
        (parse(r.text) if r.error is None else None, r.text, False, r.error) for r in first]
    again = [i for i, (value, _, _, error) in enumerate(results) if value is None and error is None]
    if again:
        second = await judge.complete([prompts[i].retried(first[i].text) for i in again])
        _count(cost, second)
        for i, reply in zip(again, second, strict=True):
            value = parse(reply.text) if reply.error is None else None
            results[i] = (value, f"{first[i].text}\n--- retry ---\n{reply.text}", True,
                          reply.error)
    cost.seconds = time.perf_counter() - start
    return results, cost


def _count(cost: JudgeCost, replies: Sequence[JudgeReply]) -> None:
    for reply in replies:
        if reply.cached:
            cost.cached += 1
        elif reply.error is None:
            cost.calls += 1
            cost.prompt_tokens += reply.prompt_tokens
            cost.output_tokens += reply.output_tokens


async def grade_answers(judge: Judge, items: Sequence[GradeItem],
                        ) -> tuple[list[Grade], JudgeCost]:
    """Grade every answer in one batch (the unparsable ones retried once, together)."""
    prompts = [grade_prompt(question=it.question, reference=it.reference,
                            eval_aspect=it.eval_aspect, answer=it.answer) for it in items]
    results, cost = await ask(judge, prompts, parse_grade)
    return [Grade(value, reply, retried, error) for value, reply, retried, error in results], cost
