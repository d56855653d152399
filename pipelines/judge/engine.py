"""A judge model run by promptsearch itself, on an ``EnginePool`` (batched with the rest)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from promptsearch.pipelines.engine.sampling import Sampling
from promptsearch.pipelines.judge.base import Judge, JudgeReply
from promptsearch.pipelines.judge.prompts import JudgePrompt

CHAT_MAX_TOKENS = 64
"""A chat judge writes the answer line and a one-sentence reason."""
TEXT_MAX_TOKENS = 8
"""A base model continues ``評価:``: a digit is all it needs (the parser reads the first line;
no stop string, since a base model often starts with a line break)."""


class EngineJudge(Judge):
    """Judge prompts as chat messages when the model has a chat template, else as text
    ending in the answer prefix (a base model completes it). Greedy, through the pool's
    generation cache: a re-run or a resume grades nothing twice."""

    kind = "engine"

    def __init__(self, pool: Any, *, name: str | None = None) -> None:
        self.pool = pool
        self._name = name or pool.model_name

    @property
    def name(self) -> str:
        return self._name

    async def complete(self, prompts: Sequence[JudgePrompt]) -> list[JudgeReply]:
        chat = self.pool.has_chat_template
        sampling = Sampling(temperature=0.0,
                            max_tokens=CHAT_MAX_TOKENS if chat else TEXT_MAX_TOKENS)
        requests = [p.as_messages() if chat else p.as_text() for p in prompts]
        gens = await self.pool.generate_async(requests, sampling)
        return [JudgeReply(text=g.text if chat else f"{p.prefix} {g.text.lstrip()}",
                           prompt_tokens=g.prompt_tokens, output_tokens=g.output_tokens,
                           cached=g.cached, error=g.error)
                for p, g in zip(prompts, gens, strict=True)]
