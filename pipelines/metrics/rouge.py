"""ROUGE-1/2/L F-measure (x100) for Japanese text.

``rouge-score``'s default tokenizer keeps only ``[a-z0-9]`` runs, so Japanese text yields no
tokens and every score is 0. Here the text is split into MeCab morphemes (fugashi with the
unidic-lite dictionary, pinned explicitly so an installed full UniDic cannot change the
tokens) and scored by ``rouge_score.rouge_scorer.RougeScorer`` without stemming.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from promptsearch.pipelines.metrics.registry import register_metric

__all__ = ["ROUGE_TYPES", "JapaneseTokenizer", "rouge_scores", "tokenize_japanese"]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@lru_cache(maxsize=1)
def _tagger() -> Any:
    import os

    import fugashi
    import unidic_lite

    mecabrc = os.path.join(unidic_lite.DICDIR, "mecabrc")
    return fugashi.Tagger(f'-d "{unidic_lite.DICDIR}" -r "{mecabrc}"')


def tokenize_japanese(text: str) -> list[str]:
    """Surface forms of the morphemes of ``text``, without whitespace tokens (e.g. U+3000)."""
    return [word.surface for word in _tagger()(text) if word.surface.strip()]


class JapaneseTokenizer:
    """The ``tokenize(text)`` interface that ``RougeScorer(tokenizer=...)`` expects."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize_japanese(text)


@lru_cache(maxsize=1)
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(
        list(ROUGE_TYPES), use_stemmer=False, tokenizer=JapaneseTokenizer()
    )


def rouge_scores(reference: str, prediction: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures x100; reference first, like ``RougeScorer.score(target, pred)``."""
    scores = _scorer().score(reference, prediction)
    return {name: 100.0 * scores[name].fmeasure for name in ROUGE_TYPES}


@lru_cache(maxsize=4096)
def _rouge_of(reference: str, prediction: str) -> dict[str, float]:
    """The three F-measures of one row, computed once for the three registered metrics."""
    return rouge_scores(reference, prediction)


def _register_rouge(name: str) -> None:
    def score(prediction: str, reference: str) -> float:
        return _rouge_of(reference, prediction)[name]

    score.__name__ = name
    register_metric(name, description=f"{name.upper().replace('ROUGE', 'ROUGE-')} F-measure "
                    "over fugashi (unidic-lite) morphemes (x100)")(score)


for _name in ROUGE_TYPES:
    _register_rouge(_name)
