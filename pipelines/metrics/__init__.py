"""Metrics computed exactly as the field computes them, registered by name.

Importing this package registers every metric: JGLUE exact match and character F1 (``qa``),
ROUGE-1/2/L with Japanese morphemes (``rouge``), M-IFEval's four accuracies (``ifeval``),
multiple-choice accuracy (``choice``) and a judge model's grade (``judge``).
"""

from promptsearch.pipelines.metrics import (  # noqa: F401 (registers)
    choice,
    ifeval,
    judge,
    qa,
    rouge,
)
from promptsearch.pipelines.metrics.registry import METRICS, Metric, get_metric, register_metric

__all__ = ["METRICS", "Metric", "get_metric", "register_metric"]
