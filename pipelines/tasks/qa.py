"""QA: exact match and character F1 against every gold answer (JGLUE)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from promptsearch.pipelines.metrics.qa import char_f1, exact_match


def score_row(output: str, example: Mapping[str, Any]) -> dict[str, Any]:
    golds = example["answers"]
    return {"exact_match": exact_match(output, golds), "char_f1": char_f1(output, golds)}
