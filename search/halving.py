"""Synchronous successive halving over validation chunks, as a Ray Tune scheduler.

ASHA decides each promotion against the trials that happen to have reached a rung so far.
That suits many parallel workers, but trials here run one at a time (so that the sequence is
a function of the seed): the first trials of a run meet an empty rung and are all promoted,
and measured on JSQuAD ASHA spent 55% of the full-evaluation generations. Synchronous
successive halving pauses every trial of a bracket at a rung until the whole bracket has
reached it, then keeps the best 1/eta. It is Tune's HyperBand restricted to its most
aggressive bracket shape (n = eta^s trials starting at ``grace_period``), with two changes:
a bracket is only halved once all of its trials have been added, and a paused trial gives its
slot back (``slots.py``), so that ``--concurrency`` trials run while the others wait.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers.hyperband import HyperBandScheduler, _Bracket

from promptsearch.search.slots import TrialSlots


class _FullBracket(_Bracket):
    """A bracket that is halved only once every trial meant for it has been added."""

    def filled(self) -> bool:
        return len(self._all_trials) >= self._n0

    def cur_iter_done(self) -> bool:
        return self.filled() and super().cur_iter_done()


class SyncHalvingScheduler(HyperBandScheduler):
    """Brackets of ``eta ** s`` trials (the last one smaller), each halved at chunks
    ``grace_period * eta ** i`` until ``max_t``; deterministic for a given result sequence."""

    def __init__(self, *, time_attr: str, metric: str, mode: str, max_t: int,
                 reduction_factor: int = 3, grace_period: int = 1, num_samples: int,
                 slots: TrialSlots) -> None:
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t,
                         reduction_factor=reduction_factor)
        self.halvings = halvings(max_t, reduction_factor, grace_period)
        self.bracket_size = reduction_factor ** self.halvings
        self._grace = grace_period
        self._remaining = num_samples
        self._slots = slots
        self._retrying: set[Trial] = set()
        self._s_max_1 = 1  # one bracket per HyperBand "band": every bracket has the same shape

    def _create_bracket(self, s: int) -> _Bracket:
        size = max(1, min(self.bracket_size, self._remaining))
        return _FullBracket(time_attr=self._time_attr, max_trials=size,
                            init_t_attr=self._grace, max_t_attr=self._max_t_attr,
                            eta=self._eta, s=self.halvings,
                            stop_last_trials=self._stop_last_trials)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        if trial in self._retrying:  # Tune re-adds a trial it retries: keep its place
            self._retrying.discard(trial)
            return
        super().on_trial_add(tune_controller, trial)
        self._remaining -= 1

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        # Tune also calls this before it retries a trial; HyperBand would then drop the trial
        # from its bracket and halve the bracket without it.
        if trial.should_recover():
            self._retrying.add(trial)
            return
        super().on_trial_error(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        if not self._slots.free():
            return None
        trial = super().choose_trial_to_run(tune_controller)
        if trial is not None:
            self._slots.paused.discard(trial.trial_id)
        return trial

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.PAUSE:
            self._slots.paused.add(trial.trial_id)
        return action


def halvings(max_t: int, reduction_factor: int, grace_period: int = 1) -> int:
    """How many times a bracket is cut before its survivors reach ``max_t``."""
    return max(0, math.ceil(math.log(max_t / grace_period, reduction_factor) - 1e-9))


def planned_chunk_runs(trials: int, max_t: int, reduction_factor: int,
                       grace_period: int = 1) -> int:
    """Chunk evaluations that synchronous successive halving spends on ``trials`` when no
    trial fails: the figure of the budget printed before a search."""
    cuts = halvings(max_t, reduction_factor, grace_period)
    total, left = 0, trials
    while left > 0:
        n, r, spent = min(reduction_factor ** cuts, left), grace_period, 0
        left -= n
        for _ in range(cuts + 1):
            total += n * (r - spent)
            n, spent, r = math.ceil(n / reduction_factor), r, min(r * reduction_factor, max_t)
    return total
