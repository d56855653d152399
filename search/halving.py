"""Synchronous successive halving over validation chunks, as a Ray Tune scheduler.

A bracket's trials all run at once. A trial that reaches a rung (a milestone chunk) is held
there, still running and blocked in its report, until every live trial of its bracket has
reached the same rung; then the best ``1/eta`` go on and the rest are stopped. Because the
whole rung runs together, the engines receive every trial's rows at once (a bracket of 9
trials x 5 rows is one batch of 45), and because a promotion waits for the whole rung, the
decisions depend on the scores alone, not on which trial finished first.

Holding a trial (``NOOP``) costs nothing: no checkpoint is written, no actor is stopped or
restarted, as HyperBand's pause and resume would. The bracket shape is HyperBand's most
aggressive one (n = eta^s trials starting at ``grace_period``), which measured on JSQuAD spent
0.29 of exhaustive evaluation's generations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from promptsearch.search.plan import BracketPlan


@dataclass
class _Rung:
    expected: list[str]
    """Trial ids meant to reach this rung, in suggestion order."""
    scores: dict[str, float] = field(default_factory=dict)
    decided: dict[str, str] = field(default_factory=dict)
    """CONTINUE or STOP per trial, once the rung is complete."""


class SyncHalvingScheduler(FIFOScheduler):
    """Holds each trial at its bracket's rungs until the rung is complete, then keeps the best
    ``ceil(n / eta)``; deterministic for given scores (ties go to the earlier trial)."""

    def __init__(self, *, plan: BracketPlan, max_t: int, reduction_factor: int = 3,
                 grace_period: int = 1, metric: str = "score") -> None:
        super().__init__()
        self._metric, self._mode = metric, "max"
        self.plan = plan
        self.max_t = max_t
        self.eta = reduction_factor
        self.milestones = milestones(max_t, reduction_factor, grace_period)
        self._rungs: dict[tuple[int, int], _Rung] = {}
        self._held: dict[str, Trial] = {}
        self._dead: set[str] = set()

    # -- Tune's scheduler interface -------------------------------------------------------
    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        chunk = int(result["chunk"])
        if chunk not in self.milestones or chunk >= self.max_t:
            return TrialScheduler.CONTINUE
        rung = self._rung(trial.trial_id, chunk)
        if trial.trial_id in rung.decided:  # a retried trial reporting its rung again
            return rung.decided[trial.trial_id]
        rung.scores[trial.trial_id] = float(result[self._metric])
        self._held[trial.trial_id] = trial
        return self._decide(tune_controller, trial.trial_id, chunk, current=trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._held.pop(trial.trial_id, None)
        if trial.should_recover():  # Tune retries it from its checkpoint: it keeps its place
            return
        self._dead.add(trial.trial_id)
        for chunk in self.milestones:
            if (self.plan.bracket_of(trial.trial_id), chunk) in self._rungs:
                self._decide(tune_controller, trial.trial_id, chunk, current=None)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._held.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._held.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        return f"SyncHalving: {len(self._held)} trials held at a rung"

    # -- rungs ----------------------------------------------------------------------------
    def _rung(self, trial_id: str, chunk: int) -> _Rung:
        bracket = self.plan.bracket_of(trial_id)
        key = (bracket, chunk)
        if key not in self._rungs:
            index = self.milestones.index(chunk)
            if index == 0:
                expected = list(self.plan.members[bracket])
            else:
                before = self._rungs[(bracket, self.milestones[index - 1])]
                expected = [t for t, d in before.decided.items() if d == TrialScheduler.CONTINUE]
            self._rungs[key] = _Rung(expected)
        return self._rungs[key]

    def _decide(self, tune_controller: Any, trial_id: str, chunk: int,
                current: Trial | None) -> str:
        bracket = self.plan.bracket_of(trial_id)
        rung = self._rungs[(bracket, chunk)]
        live = [t for t in rung.expected if t not in self._dead]
        complete = self.plan.closed(bracket) and all(t in rung.scores for t in live)
        if rung.decided or not complete:
            return TrialScheduler.NOOP
        order = {t: i for i, t in enumerate(live)}
        ranked = sorted(live, key=lambda t: (-rung.scores[t], order[t]))
        keep = set(ranked[:math.ceil(len(live) / self.eta)])
        for t in live:
            rung.decided[t] = TrialScheduler.CONTINUE if t in keep else TrialScheduler.STOP
        if self.milestones.index(chunk) == 0:
            self.plan.first_rung_decided(bracket, keep)
        for t, decision in rung.decided.items():
            held = self._held.pop(t, None)
            if held is None or held is current:
                continue
            if decision == TrialScheduler.CONTINUE:
                # Tune has no public call to continue a trial that a scheduler held: this is
                # what its own CONTINUE decision does.
                tune_controller._schedule_trial_train(held)
            else:
                tune_controller.stop_trial(held)
        if current is not None:
            self._held.pop(current.trial_id, None)
            return rung.decided.get(current.trial_id, TrialScheduler.STOP)
        return TrialScheduler.NOOP


def halvings(max_t: int, reduction_factor: int, grace_period: int = 1) -> int:
    """How many times a bracket is cut before its survivors reach ``max_t``."""
    return max(0, math.ceil(math.log(max_t / grace_period, reduction_factor) - 1e-9))


def milestones(max_t: int, reduction_factor: int, grace_period: int = 1) -> list[int]:
    """The chunks at which a bracket is cut, then ``max_t``: e.g. 1, 3, 4 for 4 chunks, eta 3."""
    points = [min(grace_period * reduction_factor ** i, max_t)
              for i in range(halvings(max_t, reduction_factor, grace_period) + 1)]
    return sorted(set(points) | {max_t})


def bracket_size(max_t: int, reduction_factor: int, grace_period: int = 1) -> int:
    return reduction_factor ** halvings(max_t, reduction_factor, grace_period)


def planned_chunk_runs(trials: int, max_t: int, reduction_factor: int,
                       grace_period: int = 1) -> int:
    """Chunk evaluations that synchronous successive halving spends on ``trials`` when no
    trial fails: the figure of the budget printed before a search."""
    points = milestones(max_t, reduction_factor, grace_period)
    size = bracket_size(max_t, reduction_factor, grace_period)
    total, left = 0, trials
    while left > 0:
        n, spent = min(size, left), 0
        left -= n
        for point in points:
            total += n * (point - spent)
            n, spent = math.ceil(n / reduction_factor), point
    return total
