"""Decoding parameters: one small frozen object with OpenAI field names."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from promptsearch.pipelines.errors import UserError

_ESCAPE = re.compile(r"\\([nt\\])")
_ESCAPED = {"n": "\n", "t": "\t", "\\": "\\"}


def decode_stop(text: str) -> str:
    """A stop string typed on a command line: ``\\n``, ``\\t`` and ``\\\\`` become newline, tab
    and backslash; everything else, non-ASCII text and any other backslash included, is kept
    as typed (``unicode_escape`` would turn 。 into mojibake and fail on a lone backslash)."""
    return _ESCAPE.sub(lambda m: _ESCAPED[m.group(1)], text)


@dataclass(frozen=True)
class Sampling:
    """How to decode one request. ``temperature=0`` is greedy decoding."""

    temperature: float = 0.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    max_tokens: int = 64
    """Most tokens to generate."""
    stop: tuple[str, ...] = field(default_factory=tuple)
    """Strings that end the generation (not included in the output)."""
    repetition_penalty: float = 1.0
    """> 1 discourages repeating tokens (vLLM's definition)."""
    seed: int | None = None
    """Per-request seed, so a sampled request is reproducible."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        for name in ("temperature", "top_p", "repetition_penalty"):
            # NaN passes no comparison and infinity passes some; JSON and YAML both carry them.
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value!r}")
        checks = [
            (self.temperature >= 0, "temperature must be >= 0", self.temperature),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]", self.top_p),
            (isinstance(self.max_tokens, int) and self.max_tokens >= 1,
             "max_tokens must be an integer >= 1", self.max_tokens),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0",
             self.repetition_penalty),
            (all(isinstance(s, str) and s for s in self.stop),
             "stop must be a list of non-empty strings", list(self.stop)),
        ]
        for ok, message, value in checks:
            if not ok:
                raise UserError(f"{message}, got {value!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "sampling") -> Sampling:
        """Build from YAML/JSON, naming the unknown field if there is one."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{where}: unknown field {unknown[0]!r}; "
                            f"allowed: {', '.join(sorted(known))}")
        try:
            return cls(**{k: v for k, v in data.items() if v is not None})
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        except TypeError as exc:
            raise UserError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
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
