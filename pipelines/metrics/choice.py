"""Multiple-choice accuracy (JCommonsenseQA, as JGLUE scores it: the share of correct labels)."""

from __future__ import annotations

from promptsearch.pipelines.metrics.registry import register_metric

__all__ = ["accuracy"]


@register_metric("accuracy", description="the chosen label equals the correct one (x100)")
def accuracy(prediction: str, reference: int | str) -> float:
    """100.0 if ``prediction`` (a label such as ``"2"``) names the correct label, else 0.0."""
    return 100.0 if prediction.strip() == str(reference).strip() else 0.0
