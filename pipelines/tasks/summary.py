"""Summarisation: ROUGE-1/2/L F-measure against the reference summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from promptsearch.pipelines.metrics.rouge import rouge_scores


def score_row(output: str, example: Mapping[str, Any]) -> dict[str, Any]:
    return rouge_scores(example["summary"], output)
