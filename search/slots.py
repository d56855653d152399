"""How many trials run at once, and in which order they were suggested.

Trials ask Ray for no CPU (the engines hold the cores), so Tune would start every trial it
has. Tune's ``ConcurrencyLimiter`` caps trials that exist, but a trial paused at a rung by
successive halving still exists and would then block the rest of its bracket forever. Here a
paused trial gives its slot back: ``--concurrency`` counts trials that are actually running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher


@dataclass
class TrialSlots:
    """Shared by the limiter (which creates trials) and the scheduler (which pauses and
    resumes them)."""

    limit: int
    live: set[str] = field(default_factory=set)
    paused: set[str] = field(default_factory=set)

    def free(self) -> bool:
        return len(self.live - self.paused) < self.limit


class SlotLimiter(ConcurrencyLimiter):
    """Suggests a new trial only while a slot is free; remembers the order of suggestions
    (Tune's result grid moves a trial that was retried)."""

    def __init__(self, searcher: Searcher, slots: TrialSlots) -> None:
        super().__init__(searcher, max_concurrent=2**31 - 1)
        self.slots = slots
        self.suggested: list[str] = []

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if not self.slots.free():
            return None
        config = super().suggest(trial_id)
        if config is not None:
            self.slots.live.add(trial_id)
            self.suggested.append(trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        self.slots.live.discard(trial_id)
        self.slots.paused.discard(trial_id)
        super().on_trial_complete(trial_id, result=result, error=error)

    def position(self, trial_id: str) -> int:
        return self.suggested.index(trial_id) if trial_id in self.suggested \
            else len(self.suggested)
