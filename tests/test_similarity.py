"""The ``similar`` few-shot selector's BM25 ranks exactly as the textbook formula does, one
document at a time (the oracle below), on real Japanese data: the postings and numpy sums
are a speed-up, not a different selector."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from promptsearch.pipelines.data.taskdata import load_task_data
from promptsearch.pipelines.prompting.fewshot import SimilarityIndex, _bigrams, _text
from promptsearch.pipelines.prompting.prompts import demo_pool
from promptsearch.pipelines.tasks import TASK_NAMES, load_task
from tests.conftest import JSQUAD


def bm25_ranking(docs: list[str], query: str, k: int, k1: float = 1.2,
                 b: float = 0.75) -> list[int]:
    tfs = [Counter(_bigrams(d)) for d in docs]
    lengths = [sum(tf.values()) for tf in tfs]
    avg = sum(lengths) / len(lengths)
    df = Counter(g for tf in tfs for g in tf)
    idf = {g: math.log(1 + (len(docs) - c + 0.5) / (c + 0.5)) for g, c in df.items()}
    grams = set(_bigrams(query))
    scores = []
    for i, tf in enumerate(tfs):
        norm = k1 * (1 - b + b * lengths[i] / avg)
        scores.append((-sum(idf[g] * tf[g] * (k1 + 1) / (tf[g] + norm)
                            for g in grams if g in tf), i))
    return [i for _, i in sorted(scores)[:k]]


@pytest.mark.parametrize("source", [*TASK_NAMES, "jsquad"])
def test_similarity_ranks_as_bm25(source: str) -> None:
    task = load_task("qa" if source == "jsquad" else source)
    data = load_task_data(task, JSQUAD if source == "jsquad" else None, seed=0,
                          max_validation=60)
    docs = [_text(e, task.input_fields) for e in demo_pool(task, data.fewshot)]
    assert len(docs) >= 8
    index = SimilarityIndex(docs)
    queries = [_text(q, task.input_fields) for q in data.validation[:60]]
    for query in [*queries, docs[0], "", "?"]:
        assert index.top(query, 4) == bm25_ranking(docs, query, 4), query[:40]
