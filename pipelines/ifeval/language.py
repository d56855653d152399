"""ja:language:response_language."""

from __future__ import annotations

import functools
from collections.abc import Callable


@functools.lru_cache(maxsize=1)
def _detector() -> tuple[Callable[[str], str], type[Exception]]:
    from langdetect import DetectorFactory, LangDetectException, detect

    # langdetect is randomised; the reference leaves it unseeded, we pin it so verdicts repeat.
    DetectorFactory.seed = 0
    return detect, LangDetectException


def response_language(value: str, *, language: str) -> bool:
    """Text langdetect cannot classify (e.g. digits only) counts as followed (reference)."""
    detect, undetectable = _detector()
    try:
        return detect(value) == language
    except undetectable:
        return True
