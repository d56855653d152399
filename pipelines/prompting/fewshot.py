"""Few-shot demo selection: named selectors over a pool of solved examples."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from promptsearch.pipelines.errors import UserError

Example = Mapping[str, Any]


def _text(example: Example, fields: Sequence[str]) -> str:
    return "\n".join(str(example.get(f, "")) for f in fields)


def _bigrams(text: str) -> list[str]:
    text = "".join(text.split())
    return [text[i:i + 2] for i in range(len(text) - 1)] or [text]


class SimilarityIndex:
    """Okapi BM25 over character bigrams: language-agnostic lexical similarity, no model.

    A query's bigrams count once each, so a document's score is a sum of per-(bigram,
    document) weights fixed by the pool: they are computed here once, and a query adds up
    the postings of its bigrams (numpy) instead of visiting every document."""

    def __init__(self, docs: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        import numpy as np

        tfs = [Counter(_bigrams(d)) for d in docs]
        lengths = [sum(tf.values()) for tf in tfs]
        avg = max(sum(lengths) / max(len(lengths), 1), 1e-9)
        df = Counter(g for tf in tfs for g in tf)
        n = len(docs)
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for i, tf in enumerate(tfs):
            norm = k1 * (1 - b + b * lengths[i] / avg)
            for g, count in tf.items():
                idf = math.log(1 + (n - df[g] + 0.5) / (df[g] + 0.5))
                docs_of, weights = postings.setdefault(g, ([], []))
                docs_of.append(i)
                weights.append(idf * count * (k1 + 1) / (count + norm))
        self.n = n
        self.postings = {g: (np.array(d, dtype=np.int64), np.array(w))
                         for g, (d, w) in postings.items()}

    def top(self, query: str, k: int) -> list[int]:
        """The ``k`` best documents, ties to the earlier one."""
        import numpy as np

        hits = [self.postings[g] for g in sorted(set(_bigrams(query))) if g in self.postings]
        if not hits:
            return list(range(min(k, self.n)))
        scores = np.bincount(np.concatenate([d for d, _ in hits]),
                             weights=np.concatenate([w for _, w in hits]), minlength=self.n)
        return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


@lru_cache(maxsize=16)
def _index(docs: tuple[str, ...]) -> SimilarityIndex:
    return SimilarityIndex(docs)


def _first(query: Example, pool: Sequence[Example], k: int, seed: int,
           fields: Sequence[str]) -> list[Example]:
    return list(pool[:k])


def _random(query: Example, pool: Sequence[Example], k: int, seed: int,
            fields: Sequence[str]) -> list[Example]:
    """One seeded demo set shared by every query, so the prompts share a cacheable prefix."""
    return random.Random(seed).sample(list(pool), k)


def _similar(query: Example, pool: Sequence[Example], k: int, seed: int,
             fields: Sequence[str]) -> list[Example]:
    index = _index(tuple(_text(e, fields) for e in pool))
    return [pool[i] for i in index.top(_text(query, fields), k)]


SELECTORS: dict[str, Callable[..., list[Example]]] = {
    "first": _first, "random": _random, "similar": _similar}
"""Registry of demo selectors by name."""
ORDERS = ("as_selected", "reversed")


def select_demos(query: Example, pool: Sequence[Example], *, k: int, selector: str,
                 order: str, seed: int, fields: Sequence[str], id_field: str) -> list[Example]:
    """``k`` demos for ``query`` from ``pool``, never the query itself."""
    if k == 0:
        return []
    if selector not in SELECTORS:
        raise UserError(f"unknown few-shot selector {selector!r}; known: {', '.join(SELECTORS)}")
    if order not in ORDERS:
        raise UserError(f"unknown few-shot order {order!r}; known: {', '.join(ORDERS)}")
    qid = query.get(id_field)
    candidates = [e for e in pool if e.get(id_field) != qid] if qid is not None else list(pool)
    if k > len(candidates):
        raise UserError(f"few-shot k={k} is larger than the pool of {len(candidates)} examples")
    demos = SELECTORS[selector](query, candidates, k, seed, fields)
    return demos[::-1] if order == "reversed" else demos

