"""QA (JSQuAD): reads SQuAD/JSQuAD JSON too; gold answers are a list (a CSV cell holds JSON).

Scored by the registered ``exact_match`` and ``char_f1`` (JGLUE's definitions, max over the
gold answers).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from promptsearch.pipelines.data.datasets import decode_answers, load_jsquad


def read_file(path: Path, field_map: Mapping[str, str] | None) -> list[dict[str, Any]] | None:
    return load_jsquad(path) if path.suffix == ".json" else None


def decode(example: dict[str, Any], where: str) -> set[str]:
    if example.get("answers") is None:
        return set()
    example["answers"] = decode_answers(example["answers"], where)
    return {"answers"}
