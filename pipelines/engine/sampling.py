"""Decoding parameters: one small frozen object with OpenAI field names."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StrictInt, StrictStr

from promptsearch.pipelines.contract import Contract, validate_contract

_ESCAPE = re.compile(r"\\([nt\\])")
_ESCAPED = {"n": "\n", "t": "\t", "\\": "\\"}


def decode_stop(text: str) -> str:
    """A stop string typed on a command line: ``\\n``, ``\\t`` and ``\\\\`` become newline, tab
    and backslash; everything else, non-ASCII text and any other backslash included, is kept
    as typed (``unicode_escape`` would turn 。 into mojibake and fail on a lone backslash)."""
    return _ESCAPE.sub(lambda m: _ESCAPED[m.group(1)], text)


def _top_p_range(value: float) -> float:
    if not 0 < value <= 1:
        raise ValueError("must be in (0, 1]")
    return value


# One definition per decoding field, shared by ``Sampling`` and the search space's choices.
Temperature = Annotated[float, Field(strict=True, ge=0)]
TopP = Annotated[float, Field(strict=True), AfterValidator(_top_p_range)]
MaxTokens = Annotated[StrictInt, Field(ge=1)]
RepetitionPenalty = Annotated[float, Field(strict=True, gt=0)]
StopString = Annotated[StrictStr, Field(min_length=1)]


class Sampling(Contract):
    """How to decode one request. ``temperature=0`` is greedy decoding.

    The ``sampling`` mapping of ``best.yaml`` and of a task's YAML; serve maps a request's
    OpenAI fields onto it one to one.
    """

    temperature: Temperature = 0.0
    """Softmax temperature, >= 0; 0 means greedy decoding."""
    top_p: TopP = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    max_tokens: MaxTokens = 64
    """Most tokens to generate, >= 1."""
    stop: tuple[StopString, ...] = ()
    """Strings that end the generation (not included in the output): a list of non-empty
    strings, e.g. ``["\\n"]``."""
    repetition_penalty: RepetitionPenalty = 1.0
    """> 1 discourages repeating tokens (vLLM's definition); > 0."""
    seed: StrictInt | None = None
    """Per-request seed, so a sampled request is reproducible; null for none."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "sampling") -> Sampling:
        """Build from YAML/JSON; an error names ``where`` and the field."""
        return validate_contract(cls, data, where=where)

    def to_dict(self) -> dict[str, Any]:
        out = self.model_dump()
        out["stop"] = list(self.stop)
        return out

    def key(self) -> str:
        """Canonical text of every field, for content-addressed caching."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def reproducible(self) -> bool:
        """Greedy or seeded: the same request gives the same output, so it may be cached and
        sent once. An unseeded sampled request must be generated every time it is asked for."""
        return self.greedy or self.seed is not None

    def to_vllm(self) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=list(self.stop) or None,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )
