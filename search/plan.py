"""Which trials form which bracket, and when the next bracket may be suggested.

Shared by the searcher (which suggests a whole bracket at once) and the scheduler (which
halves it). The rule that keeps a search a function of its seed, although a bracket's
trials run at the same time: bracket ``n`` is suggested once bracket ``n-1`` has decided its
first rung and bracket ``n-2`` has finished, and at that moment Optuna is told exactly the
trials of brackets up to ``n-2`` and the trials of bracket ``n-1`` that its first rung
stopped. So bracket ``n``'s first rung runs beside bracket ``n-1``'s later rungs (the engines
stay full), and what TPE knows when it suggests does not depend on timing.

While TPE is still in its random start-up (fewer than ``startup`` trials told), a suggestion
cannot depend on any outcome, so there is nothing to wait for: such a bracket is suggested as
soon as the one before it, and its first rung runs together with that one's. With the default
16 trials (brackets of 9 and 7) both brackets start at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BracketPlan:
    sizes: list[int]
    """Trials per bracket, in order."""
    overlap: bool = True
    """False: a bracket is suggested only when the one before it has finished (ASHA)."""
    startup: int = 0
    """TPE's start-up trials (suggested at random); see the module doc."""
    members: list[list[str]] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)
    promoted: dict[int, set[str]] = field(default_factory=dict)
    """Per bracket, the trials its first rung kept (absent until that rung is decided)."""
    _bracket: dict[str, int] = field(default_factory=dict)

    # -- the searcher's side ----------------------------------------------------------------
    def may_open(self) -> bool:
        """Whether the next bracket may be suggested now."""
        n = len(self.members)
        if n == 0:
            return True
        if n >= len(self.sizes) or not self.closed(n - 1):
            return False
        if not self.overlap:
            return self._done(n - 1)
        if self._in_startup(n):
            return True
        return n - 1 in self.promoted and self._done(n - 2) and all(
            t in self.finished for t in self.members[n - 1] if t not in self.promoted[n - 1])

    def told_at_open(self) -> list[str]:
        """Trials whose outcome Optuna learns when the next bracket opens (see module doc)."""
        n = len(self.members)
        if n == 0:
            return []
        if not self.overlap:
            return [t for b in range(n) for t in self.members[b]]
        if self._in_startup(n):
            return []
        told = [t for b in range(n - 1) for t in self.members[b]]
        return told + [t for t in self.members[n - 1] if t not in self.promoted[n - 1]]

    def open(self) -> int:
        self.members.append([])
        return len(self.members) - 1

    def add(self, trial_id: str, bracket: int) -> None:
        self.members[bracket].append(trial_id)
        self._bracket[trial_id] = bracket

    def shrink(self, bracket: int, size: int) -> None:
        """The space ran out of new configurations: this bracket holds ``size`` trials and
        is the last."""
        self.sizes[bracket] = size
        del self.sizes[bracket + 1:]

    # -- the scheduler's side ---------------------------------------------------------------
    def bracket_of(self, trial_id: str) -> int:
        return self._bracket[trial_id]

    def closed(self, bracket: int) -> bool:
        """Every trial of the bracket has been suggested."""
        return len(self.members[bracket]) >= self.sizes[bracket]

    def first_rung_decided(self, bracket: int, kept: set[str]) -> None:
        self.promoted[bracket] = set(kept)

    def finish(self, trial_id: str) -> None:
        self.finished.add(trial_id)

    def _in_startup(self, bracket: int) -> bool:
        """Fewer trials come before this bracket than TPE samples at random: however many of
        them are told by the normal rule, TPE would still suggest at random."""
        return self.overlap and sum(self.sizes[:bracket]) < self.startup

    def _done(self, bracket: int) -> bool:
        return bracket < 0 or (self.closed(bracket)
                               and all(t in self.finished for t in self.members[bracket]))
