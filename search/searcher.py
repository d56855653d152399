"""``StudySearcher``: an Optuna study (seeded TPE) behind Tune's searcher interface.

Unlike Tune's ``OptunaSearch`` it

- suggests a whole bracket at once (TPE's constant liar keeps the bracket's trials apart),
  and tells Optuna the outcomes at the moments ``BracketPlan`` fixes, so the trials a seed
  gives do not depend on which trial finished first;
- tells the truth: a trial stopped early is PRUNED, with its running score after each chunk
  as intermediate values; a failed one is FAIL; a finished one is COMPLETE with its score;
- does not spend a trial on a configuration it has already suggested: the repeat is recorded
  (FAIL, with the user attribute ``duplicate_of``) and another one is asked for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import Searcher

from promptsearch.search.plan import BracketPlan

log = logging.getLogger(__name__)

TRIAL_NUMBER = "trial"
"""The key in Tune's trial config that carries the Optuna trial number (shown in the Tune
dashboard and the progress lines; not a parameter)."""

MAX_REPEATS = 20
"""Repeated suggestions in a row after which TPE counts as stuck: the search stops there."""


@dataclass
class Outcome:
    """What a trial came to, as Optuna is told it."""

    number: int
    params: dict[str, Any]
    state: str = "running"
    """``complete``, ``pruned``, ``error``, ``duplicate`` or (not yet told) ``running``."""
    running_scores: list[float] = field(default_factory=list)
    duplicate_of: int | None = None
    trial_id: str | None = None


class StudySearcher(Searcher):
    def __init__(self, *, study: Any, suggest: Callable[[Any], None],
                 identity: Callable[[dict[str, Any]], str], plan: BracketPlan,
                 points_to_evaluate: Sequence[dict[str, Any]], n_chunks: int) -> None:
        """``suggest`` defines the space on an Optuna trial; ``identity`` names the
        configuration that a set of parameters gives (equal names are repeats)."""
        super().__init__(metric="score", mode="max")
        self.study = study
        self._suggest = suggest
        self._identity = identity
        self.plan = plan
        self.n_chunks = n_chunks
        for point in points_to_evaluate:
            study.enqueue_trial(dict(point), skip_if_exists=False)
        self.outcomes: list[Outcome] = []
        self._seen: dict[str, int] = {}
        self._optuna_trials: dict[int, Any] = {}
        self._queue: list[Outcome] = []
        self._bracket = -1
        self._by_id: dict[str, Outcome] = {}
        self._told: set[int] = set()
        self._buffered: dict[str, tuple[str, list[float]]] = {}
        self.exhausted = False

    # -- Tune's searcher interface --------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if not self._queue:
            if len(self.plan.members) >= len(self.plan.sizes):
                return Searcher.FINISHED
            if not self.plan.may_open():
                return None
            self._open_bracket()
            if not self._queue:
                return Searcher.FINISHED
        outcome = self._queue.pop(0)
        outcome.trial_id = trial_id
        self._by_id[trial_id] = outcome
        self.plan.add(trial_id, self._bracket)
        return {**outcome.params, TRIAL_NUMBER: outcome.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        outcome = self._by_id[trial_id]
        scores = outcome.running_scores
        chunk = int(result["chunk"])
        del scores[chunk - 1:]  # a retried trial reports its last chunk again
        scores.append(float(result["score"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        outcome = self._by_id[trial_id]
        if result and "chunk" in result:
            self.on_trial_result(trial_id, result)
        if error:
            state = "error"
        elif len(outcome.running_scores) >= self.n_chunks:
            state = "complete"
        else:
            state = "pruned"
        self._buffered[trial_id] = (state, list(outcome.running_scores))
        self.plan.finish(trial_id)

    # -- brackets -------------------------------------------------------------------------
    def _open_bracket(self) -> None:
        for trial_id in self.plan.told_at_open():
            self._tell(trial_id)
        self._bracket = self.plan.open()
        size = self.plan.sizes[self._bracket]
        repeats = 0
        while len(self._queue) < size and repeats < MAX_REPEATS:
            trial = self.study.ask()
            self._suggest(trial)
            outcome = Outcome(number=trial.number, params=dict(trial.params))
            self.outcomes.append(outcome)
            self._optuna_trials[trial.number] = trial
            name = self._identity(outcome.params)
            if name in self._seen:
                repeats += 1
                outcome.state, outcome.duplicate_of = "duplicate", self._seen[name]
                trial.set_user_attr("duplicate_of", self._seen[name])
                self.study.tell(trial, state=_state("error"))
                continue
            repeats = 0
            self._seen[name] = trial.number
            self._queue.append(outcome)
        if len(self._queue) < size:
            self.exhausted = True
            log.warning("TPE suggested no new configuration %d times in a row; the search "
                        "stops at %d trials", MAX_REPEATS,
                        sum(len(m) for m in self.plan.members[:-1]) + len(self._queue))
            self.plan.shrink(self._bracket, len(self._queue))

    def finish(self) -> None:
        """Tell Optuna every outcome not told yet (the search is over)."""
        for trial_id in self._by_id:
            self._tell(trial_id)

    def _tell(self, trial_id: str) -> None:
        outcome = self._by_id[trial_id]
        if outcome.number in self._told:
            return
        state, scores = self._buffered.get(trial_id, ("error", outcome.running_scores))
        outcome.state, outcome.running_scores = state, scores
        trial = self._optuna_trials[outcome.number]
        for step, value in enumerate(scores, start=1):
            trial.report(value, step)
        if state == "complete":
            self.study.tell(trial, scores[-1])
        else:
            self.study.tell(trial, state=_state(state))
        self._told.add(outcome.number)


def _state(state: str) -> Any:
    from optuna.trial import TrialState

    return {"pruned": TrialState.PRUNED, "error": TrialState.FAIL}[state]


def config_identity(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, ensure_ascii=False)
