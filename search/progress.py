"""Live progress: a line on stderr for long generations and per trial report, mirrored as
metrics (``pipelines/engine/telemetry.py``) for the Ray dashboard and Grafana."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from promptsearch.pipelines.engine import telemetry
from promptsearch.search.trial import TrialReport


class ProgressLine:
    """Rows done, output tokens and tokens/s; redrawn in place on a terminal, else every 10%.

    With ``final_run`` tags (task, model, split, config) the progress of a final run is also
    exported as the ``promptsearch_final_run_*`` gauges. ``label`` also names the engine calls
    in the Ray dashboard.
    """

    def __init__(self, label: str, total: int, *,
                 final_run: Mapping[str, str] | None = None) -> None:
        self.label, self.total = label, max(total, 1)
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._last_decile = -1
        self.final_run = dict(final_run or {})
        self._export(0)

    def _export(self, done: int) -> None:
        if self.final_run:
            telemetry.FINAL_RUN_ROWS.set(done, **self.final_run)
            telemetry.FINAL_RUN_PROGRESS.set(min(done / self.total, 1.0), **self.final_run)

    def __call__(self, done: int, tokens: int) -> None:
        self._export(done)
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


def trial_progress(total: int, chunks: int, *, task: str = "", model: str = "") -> Any:
    """A Tune callback printing one line per trial report: the live view of the search. It
    also exports each trial's running score and the best score so far, tagged with ``task``
    and ``model`` (and the trial's name)."""
    from ray.tune import Callback

    tags = {"task": task, "model": model}

    class TrialProgress(Callback):
        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.best: float | None = None
            self.last: dict[str, TrialReport] = {}
            self.finished = 0
            self.pruned = 0

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                            result: dict[str, Any], **info: Any) -> None:
            report = TrialReport.from_result(result)
            if report is None:
                return
            self.last[trial.trial_id] = report
            telemetry.TRIAL_SCORE.set(report.score, trial=str(trial), **tags)
            telemetry.TRIAL_CHUNK.set(report.chunk, trial=str(trial), **tags)
            if report.chunk == chunks:
                self.best = max(self.best or report.score, report.score)
                telemetry.BEST_SCORE.set(self.best, **tags)
            elapsed = time.perf_counter() - self.start
            tokens = sum(r.output_tokens for r in self.last.values())
            generations = sum(r.generations for r in self.last.values())
            cached = sum(r.cached for r in self.last.values())
            running = sum(t.status == "RUNNING" for t in trials)
            best = "-" if self.best is None else f"{self.best:.2f}"
            params = " ".join(f"{k}={v}" for k, v in trial.config.items() if k != "trial")
            number = trial.config.get("trial", list(self.last).index(trial.trial_id))
            print(f"[{elapsed:5.0f}s] trial {number} chunk "
                  f"{report.chunk}/{chunks} score {report.score:.2f} best {best} | "
                  f"running {running} done {self.finished}/{total} pruned {self.pruned} | "
                  f"{tokens / max(elapsed, 1e-9):.0f} tok/s, cache {cached}/{generations} | "
                  f"{params}", file=sys.stderr, flush=True)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                              **info: Any) -> None:
            self.finished += 1
            last = self.last.get(trial.trial_id)
            pruned = last is not None and last.chunk < chunks
            self.pruned += pruned
            telemetry.TRIALS_FINISHED.inc(state="pruned" if pruned else "complete", **tags)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                           **info: Any) -> None:
            telemetry.TRIALS_FINISHED.inc(state="error", **tags)

    return TrialProgress()
