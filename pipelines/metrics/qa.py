"""JSQuAD exact match and character F1, as JGLUE scores JSQuAD.

Source definition: yahoojapan/JGLUE, fine-tuning/patch/transformers-4.24.0_jglue-1.1.0.patch
(identical hunk in transformers-4.9.2_jglue-1.1.0.patch), which patches
transformers' src/transformers/data/metrics/squad_metrics.py:

* ``normalize_answer``: lower-case, then ``rstrip("。")`` (every trailing 。, checked
  *before* whitespace is collapsed), then ``" ".join(text.split())``. No punctuation
  removal and no Unicode (NFKC) normalisation, so ``ＡＢＣ`` and ``abc`` differ.
* ``compute_exact``: equality of the normalised strings.
* ``compute_f1``: F1 over the characters of the normalised strings (spaces left after
  collapsing count as characters); 1 if both are empty, 0 if only one is.
* ``get_raw_scores``: gold answers that normalise to "" are dropped; if none remain the
  only gold is "" (an unanswerable question). Each score is the max over the golds and the
  aggregate is 100 x the mean, so the per-row values here are already x100.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from promptsearch.pipelines.metrics.registry import register_metric

__all__ = ["char_f1", "exact_match", "normalize_answer"]


def normalize_answer(text: str) -> str:
    """Lower-case, strip trailing 。 and collapse whitespace, in JGLUE's order."""
    return " ".join(text.lower().rstrip("。").split())


def _gold_answers(golds: Sequence[str]) -> list[str]:
    if isinstance(golds, str):
        raise TypeError("golds must be a sequence of answer strings, not a single string")
    kept = [gold for gold in golds if normalize_answer(gold)]
    return kept or [""]


def _exact(gold: str, prediction: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(prediction))


def _f1(gold: str, prediction: str) -> float:
    gold_chars = list(normalize_answer(gold))
    pred_chars = list(normalize_answer(prediction))
    if not gold_chars or not pred_chars:
        return float(gold_chars == pred_chars)
    num_same = sum((Counter(gold_chars) & Counter(pred_chars)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_chars)
    recall = num_same / len(gold_chars)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """100.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    return 100.0 * max(_exact(gold, prediction) for gold in _gold_answers(golds))


def char_f1(prediction: str, golds: Sequence[str]) -> float:
    """Best character-level F1 (x100) of the prediction against the gold answers.

    An empty prediction scores 0 against any non-empty gold answer.
    """
    return 100.0 * max(_f1(gold, prediction) for gold in _gold_answers(golds))


register_metric("exact_match", description="JGLUE exact match against any gold answer "
                "(x100)")(exact_match)
register_metric("char_f1", description="JGLUE character F1, best over the gold answers "
                "(x100)")(char_f1)
