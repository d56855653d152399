"""Which of two answers is better, asked in both orders (a judge favours a position).

A side wins a row only when both orders name it; a disagreement is a tie, as in MT-Bench's
pairwise judging. A row whose verdict does not parse in either order (after its one retry)
counts in neither: it is reported apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from promptsearch.pipelines.judge.base import Judge, JudgeCost, ask
from promptsearch.pipelines.judge.parse import parse_winner
from promptsearch.pipelines.judge.prompts import pair_prompt
from promptsearch.pipelines.metrics.stats import Outcome, WinTieLoss, win_tie_loss


@dataclass(frozen=True)
class PairItem:
    question: str
    reference: str
    eval_aspect: str
    first: str
    """System A's answer."""
    second: str
    """System B's answer."""


@dataclass(frozen=True)
class PairVerdict:
    outcome: Outcome | None
    """``win`` (A better in both orders), ``loss``, ``tie``; None when unparsable."""
    forward: str | None
    """The judge's pick with A shown first: ``A``, ``B`` or ``tie`` (None: unparsable)."""
    backward: str | None
    """The pick with B shown first, named by system (``A`` means system A)."""
    replies: tuple[str, str]


_SWAP = {"A": "B", "B": "A", "tie": "tie"}


def combine(forward: str | None, backward: str | None) -> Outcome | None:
    """Both orders agree on a side: its win; they disagree, or both say tie: a tie."""
    if forward is None or backward is None:
        return None
    if forward == backward and forward != "tie":
        return "win" if forward == "A" else "loss"
    return "tie"


async def judge_pairs(judge: Judge, items: Sequence[PairItem],
                      ) -> tuple[list[PairVerdict], JudgeCost]:
    """Both orders of every pair, in one batch to the judge."""
    prompts = [pair_prompt(question=it.question, reference=it.reference,
                           eval_aspect=it.eval_aspect, first=a, second=b)
               for order in ("AB", "BA") for it in items
               for a, b in [(it.first, it.second) if order == "AB" else (it.second, it.first)]]
    results, cost = await ask(judge, prompts, parse_winner)
    n = len(items)
    verdicts = []
    for i in range(n):
        forward, back_raw = results[i][0], results[n + i][0]
        backward = None if back_raw is None else _SWAP[back_raw]
        verdicts.append(PairVerdict(combine(forward, backward), forward, backward,
                                    (results[i][1], results[n + i][1])))
    return verdicts, cost


def summarize(verdicts: Sequence[PairVerdict], *, seed: int = 0) -> tuple[WinTieLoss, int]:
    """Win/tie/loss of A against B with its bootstrap interval, and the unparsable rows."""
    outcomes = [v.outcome for v in verdicts if v.outcome is not None]
    if not outcomes:
        from promptsearch.pipelines.judge.base import JudgeError

        raise JudgeError(f"the judge gave no parsable verdict for any of {len(verdicts)} pairs "
                         "in either order; use a more capable judge model")
    return win_tie_loss(outcomes, seed=seed), len(verdicts) - len(outcomes)


def pair_items(task: Any, pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
               ) -> list[PairItem]:
    """Two runs' saved rows (matched by id) as pairs for the judge: the request, the model
    answer and grading notes where the task has them, and both outputs."""
    items = []
    for first, second in pairs:
        question = "\n\n".join(str(first.get(f, "")) for f in task.input_fields)
        reference = "\n".join(str(first.get(f)) for f in task.reference_fields
                              if f != "eval_aspect" and first.get(f) not in (None, ""))
        items.append(PairItem(question=question, reference=reference or "(なし)",
                              eval_aspect=str(first.get("eval_aspect") or ""),
                              first=str(first.get("output", "")),
                              second=str(second.get("output", ""))))
    return items
