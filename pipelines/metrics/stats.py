"""How sure a comparison is: paired bootstrap intervals, win/tie/loss, rows needed.

Every comparison promptsearch prints (best against baseline in a run, two runs, a judge's or
people's pairwise verdicts) is a difference measured on the same rows, so the rows are
resampled together (a paired bootstrap, percentile interval, seeded: the same inputs give the
same interval).

Rows needed: the half-width ``w`` of an interval over ``n`` rows shrinks as ``1/sqrt(n)``,
so the observed difference ``d`` would be as wide as the half-width at
``n_needed = ceil(n * (w / |d|)**2)`` rows. For a mean of per-row differences with standard
deviation ``sd`` that is the textbook ``(1.96 * sd / |d|)**2``; this form also holds for a
metric that is not a per-row mean (a ratio such as instruction-level accuracy). It is the
size at which a difference as large as the one observed would just reach the interval's
edge: a rough guide, not a power calculation. ``None`` when ``d`` is 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
_CELLS_PER_BATCH = 4_000_000
"""Resampled indices held in memory at once (resamples x rows), about 32 MB."""

Outcome = Literal["win", "tie", "loss"]
OUTCOMES: tuple[Outcome, ...] = ("win", "tie", "loss")


@dataclass(frozen=True)
class Interval:
    """A difference (first minus second) and its bootstrap confidence interval."""

    difference: float
    """The observed difference on all rows."""
    low: float
    high: float
    rows: int
    confidence: float
    resamples: int
    seed: int

    @property
    def separated(self) -> bool:
        """True when the interval excludes 0: the two sides are told apart."""
        return not self.low <= 0.0 <= self.high

    @property
    def rows_needed(self) -> int | None:
        """Rows at which the half-width would equal the observed difference (module doc)."""
        if self.difference == 0:
            return None
        half_width = (self.high - self.low) / 2
        return max(1, math.ceil(self.rows * (half_width / abs(self.difference)) ** 2))

    def to_dict(self) -> dict[str, float | int | bool | None]:
        return {**asdict(self), "separated": self.separated, "rows_needed": self.rows_needed}

    def describe(self, *, digits: int = 2) -> str:
        """``+1.23 [-0.40, +2.91]`` with the confidence, e.g. for a report line."""
        f = f"{{:+.{digits}f}}"
        return (f"{f.format(self.difference)}, {self.confidence:.0%} interval "
                f"[{f.format(self.low)}, {f.format(self.high)}]")


def _check(n: int, resamples: int, confidence: float) -> None:
    if n < 1:
        raise ValueError("a bootstrap needs at least one row, got 0")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _index_batches(n: int, resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    per_batch = max(1, _CELLS_PER_BATCH // n)
    for start in range(0, resamples, per_batch):
        yield rng.integers(0, n, size=(min(per_batch, resamples - start), n))


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(first: Sequence[float], second: Sequence[float], *, seed: int = 0,
                     resamples: int = RESAMPLES, confidence: float = CONFIDENCE) -> Interval:
    """Interval of mean(first) - mean(second) over the same rows (row i of each is paired)."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need two equal-length lists, got {a.shape} and "
                         f"{b.shape}")
    _check(len(a), resamples, confidence)
    diffs = a - b
    rng = np.random.default_rng(seed)
    means = np.concatenate([diffs[idx].mean(axis=1)
                            for idx in _index_batches(len(diffs), resamples, rng)])
    low, high = _percentiles(means, confidence)
    return Interval(difference=float(diffs.mean()), low=low, high=high, rows=len(diffs),
                    confidence=confidence, resamples=resamples, seed=seed)


def paired_bootstrap_statistic(rows: int, statistic: Callable[[Sequence[int]], float], *,
                               seed: int = 0, resamples: int = RESAMPLES,
                               confidence: float = CONFIDENCE) -> Interval:
    """Interval of ``statistic(indices)`` (a difference computed on the rows at ``indices``),
    for a metric that is not a per-row mean. Slower: one Python call per resample."""
    _check(rows, resamples, confidence)
    rng = np.random.default_rng(seed)
    values = np.array([statistic(idx.tolist())
                       for batch in _index_batches(rows, resamples, rng) for idx in batch])
    low, high = _percentiles(values, confidence)
    return Interval(difference=float(statistic(list(range(rows)))), low=low, high=high,
                    rows=rows, confidence=confidence, resamples=resamples, seed=seed)


def metric_difference(first_rows: Sequence[Mapping[str, object]],
                      second_rows: Sequence[Mapping[str, object]], *, metric: str,
                      aggregate: Callable[[Sequence[Mapping[str, object]]], Mapping[str, float]],
                      seed: int = 0, resamples: int = RESAMPLES,
                      confidence: float = CONFIDENCE) -> Interval:
    """Interval of a split-level metric's difference, ``aggregate(first)[metric] -
    aggregate(second)[metric]``, over rows paired by position (a task's per-row score dicts).

    Resampling recomputes the split metric from the resampled rows. When the metric is the
    mean of the rows' own ``metric`` values (checked on all rows and on a few resamples), the
    fast numpy path gives the same interval.
    """
    if len(first_rows) != len(second_rows):
        raise ValueError(f"paired rows need equal lengths, got {len(first_rows)} and "
                         f"{len(second_rows)}")

    def statistic(idx: Sequence[int]) -> float:
        return (float(aggregate([first_rows[i] for i in idx])[metric])
                - float(aggregate([second_rows[i] for i in idx])[metric]))

    per_row = _per_row_values(first_rows, second_rows, metric)
    if per_row is not None:
        a, b = per_row
        probe = np.random.default_rng(seed + 1)
        checks = [list(range(len(a)))] + [probe.integers(0, len(a), len(a)).tolist()
                                          for _ in range(3)]
        if all(math.isclose(statistic(idx), float(np.mean(a[idx]) - np.mean(b[idx])),
                            rel_tol=1e-9, abs_tol=1e-9) for idx in checks):
            return paired_bootstrap(a, b, seed=seed, resamples=resamples,
                                    confidence=confidence)
    return paired_bootstrap_statistic(len(first_rows), statistic, seed=seed,
                                      resamples=resamples, confidence=confidence)


def _per_row_values(first_rows: Sequence[Mapping[str, object]],
                    second_rows: Sequence[Mapping[str, object]],
                    metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    values = []
    for rows in (first_rows, second_rows):
        column = [row.get(metric) for row in rows]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in column):
            return None
        values.append(np.asarray(column, dtype=float))
    return values[0], values[1]


@dataclass(frozen=True)
class WinTieLoss:
    """Pairwise verdicts of a first system against a second, with an interval of
    ``(wins - losses) / n`` (from -1: the second always better, to +1: the first)."""

    wins: int
    ties: int
    losses: int
    interval: Interval

    @property
    def rows(self) -> int:
        return self.wins + self.ties + self.losses

    def to_dict(self) -> dict[str, object]:
        return {"wins": self.wins, "ties": self.ties, "losses": self.losses,
                "rows": self.rows, "net_win_rate": self.interval.to_dict()}

    def table(self, first: str = "A", second: str = "B") -> str:
        """The win/tie/loss table as plain text lines, with the interval and what it means."""
        n = self.rows
        width = max(len(first), len(second), len("tie")) + 2
        lines = [f"{first + ' better':<{width + 7}} {self.wins:>5}  {self.wins / n:6.1%}",
                 f"{'tie':<{width + 7}} {self.ties:>5}  {self.ties / n:6.1%}",
                 f"{second + ' better':<{width + 7}} {self.losses:>5}  {self.losses / n:6.1%}",
                 f"(wins - losses) / n = {self.interval.describe()} over {n} rows "
                 f"(paired bootstrap, {self.interval.resamples} resamples, seed "
                 f"{self.interval.seed})"]
        if self.interval.separated:
            better = first if self.interval.difference > 0 else second
            lines.append(f"{better} is better: the interval excludes 0")
        else:
            needed = self.interval.rows_needed
            more = "" if needed is None else (f"; about {needed} rows would be needed for a "
                                              "difference this large")
            lines.append(f"cannot tell {first} and {second} apart: the interval contains 0"
                         f"{more}")
        return "\n".join(lines)


def win_tie_loss(outcomes: Sequence[Outcome], *, seed: int = 0, resamples: int = RESAMPLES,
                 confidence: float = CONFIDENCE) -> WinTieLoss:
    """Count ``"win"`` (the first system better), ``"tie"`` and ``"loss"`` per row, and
    bootstrap ``(wins - losses) / n`` over the rows."""
    unknown = sorted({o for o in outcomes if o not in OUTCOMES})
    if unknown:
        raise ValueError(f"outcomes must be one of {', '.join(OUTCOMES)}, got {unknown[0]!r}")
    signs = [1.0 if o == "win" else -1.0 if o == "loss" else 0.0 for o in outcomes]
    interval = paired_bootstrap(signs, [0.0] * len(signs), seed=seed, resamples=resamples,
                                confidence=confidence)
    return WinTieLoss(wins=outcomes.count("win"), ties=outcomes.count("tie"),
                      losses=outcomes.count("loss"), interval=interval)


__all__ = ["CONFIDENCE", "OUTCOMES", "RESAMPLES", "Interval", "Outcome", "WinTieLoss",
           "metric_difference", "paired_bootstrap", "paired_bootstrap_statistic",
           "win_tie_loss"]
