"""A one-line live progress display on stderr for long generations."""

from __future__ import annotations

import sys
import time
from typing import Any


class ProgressLine:
    """Rows done, output tokens and tokens/s; redrawn in place on a terminal, else every 10%."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, max(total, 1)
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._last_decile = -1

    def __call__(self, done: int, tokens: int) -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        line = (f"{self.label}: {done}/{self.total} rows, {tokens} output tokens, "
                f"{tokens / elapsed:.1f} tok/s, {elapsed:.0f}s")
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if done >= self.total else ""))
            sys.stderr.flush()
            return
        decile = done * 10 // self.total
        if decile != self._last_decile:
            self._last_decile = decile
            print(line, file=sys.stderr, flush=True)


def trial_progress(total: int, chunks: int) -> Any:
    """A Tune callback printing one line per trial report: the live view of the search."""
    from ray.tune import Callback

    class TrialProgress(Callback):
        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.best: float | None = None
            self.last: dict[str, dict[str, Any]] = {}
            self.finished = 0
            self.pruned = 0

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                            result: dict[str, Any], **info: Any) -> None:
            self.last[trial.trial_id] = result
            if result["chunk"] == chunks:
                self.best = max(self.best or result["score"], result["score"])
            elapsed = time.perf_counter() - self.start
            tokens = sum(r["output_tokens"] for r in self.last.values())
            generations = sum(r["generations"] for r in self.last.values())
            cached = sum(r["cached"] for r in self.last.values())
            running = sum(t.status == "RUNNING" for t in trials)
            best = "-" if self.best is None else f"{self.best:.2f}"
            params = " ".join(f"{k}={v}" for k, v in trial.config.items())
            print(f"[{elapsed:5.0f}s] trial {len(self.last)}/{total} chunk "
                  f"{result['chunk']}/{chunks} score {result['score']:.2f} best {best} | "
                  f"running {running} done {self.finished} pruned {self.pruned} | "
                  f"{tokens / max(elapsed, 1e-9):.0f} tok/s, cache {cached}/{generations} | "
                  f"{params}", file=sys.stderr, flush=True)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                              **info: Any) -> None:
            self.finished += 1
            if self.last.get(trial.trial_id, {}).get("chunk", chunks) < chunks:
                self.pruned += 1

    return TrialProgress()
