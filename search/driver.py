"""``PromptSearch``: Ray Tune + an Optuna study (seeded TPE) + early stopping over validation
chunks, by synchronous successive halving (the default, see ``halving.py``) or ASHA.

The baseline configuration is the first trial. A bracket's trials run together and share the
engine pool the driver built, through one ``TrialEvaluator``; the trial sequence is a function
of the seed alone (``plan.py``), which is what makes ``--resume`` (a replay served from the
generation cache) give the same result.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptsearch.pipelines.engine.pool import EnginePool
from promptsearch.pipelines.errors import UserError, last_line
from promptsearch.pipelines.prompting.config import PromptConfig
from promptsearch.pipelines.tasks import Task
from promptsearch.search.evaluator import FinalRows, start_evaluator
from promptsearch.search.halving import SyncHalvingScheduler, bracket_size, milestones
from promptsearch.search.plan import BracketPlan
from promptsearch.search.searcher import StudySearcher, config_identity
from promptsearch.search.space import SearchSpace
from promptsearch.search.trial import COUNTS, TrialReport, run_trial, validation_chunks

log = logging.getLogger(__name__)

TPE_STARTUP_TRIALS = 10
"""Trials TPE suggests at random before it models the outcomes (Optuna's default); the
bracket plan starts brackets that fall inside them at once."""


@dataclass
class TrialRecord:
    number: int
    """The trial's number in the Optuna study (``optuna.db``), in suggestion order."""
    params: dict[str, Any]
    config: dict[str, Any]
    state: str
    """``complete`` (every chunk), ``pruned`` (stopped early by the scheduler), ``error``, or
    ``duplicate`` (a repeat of trial ``duplicate_of``'s configuration, not run again)."""
    score: float | None
    chunk_scores: list[float]
    generations: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    failures: int = 0
    """Attempts that raised or whose process died; a trial is retried ``max_failures`` times
    (resuming from its last chunk) before it is recorded as ``error``."""
    duplicate_of: int | None = None


@dataclass
class SearchResult:
    trials: list[TrialRecord]
    best: TrialRecord
    baseline: TrialRecord
    best_config: PromptConfig
    baseline_config: PromptConfig
    study_storage: str
    tune_dir: Path
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptSearch:
    """Settings of the searcher; the data comes in ``search``."""

    trials: int = 16
    """Distinct configurations to run (a repeated suggestion does not count)."""
    chunks: int = 4
    seed: int = 0
    time_budget_s: float | None = None
    reduction_factor: int = 3
    """The scheduler keeps the best 1/reduction_factor of trials at each rung (eta)."""
    scheduler: str = "halving"
    """``halving`` (synchronous successive halving; a bracket's trials run together) or
    ``asha`` (asynchronous: for many concurrent trials on a large cluster)."""
    concurrency: int = 1
    """With ``asha``: trials suggested and run together."""
    max_failures: int = 1
    """Retries of a trial that raised or whose process died (a failed trial has no score:
    it is never counted as 0)."""
    metric: str | None = None
    """The task metric the search maximises (a trial's score); None: the task's primary."""

    def search(self, task: Task, *, space: SearchSpace, validation: Sequence[dict[str, Any]],
               fewshot: Sequence[dict[str, Any]], pool: EnginePool, run_dir: Path,
               callbacks: Sequence[Any] = (),
               candidates: Sequence[dict[str, Any]] | None = None,
               test: Sequence[dict[str, Any]] | None = None,
               judge: Any = None) -> SearchResult:
        """Search ``self.trials`` configurations; or exactly ``candidates`` (Optuna params,
        the baseline's first), in order, when given. ``test``: the final run's test rows, whose
        generations the search may start early to fill the engines (``evaluator.py``).
        ``judge``: grades the answers of a judged task (``open``); its cost is in
        ``metadata["judge_cost"]``."""
        import optuna
        import ray
        from ray import tune
        from ray.tune.search import ConcurrencyLimiter

        baseline = PromptConfig.baseline(task)
        points = list(candidates) if candidates else [space.params_of(baseline)]
        chunks = validation_chunks(list(validation), self.chunks)
        n_chunks = len(chunks)
        total = len(points) if candidates else min(self.trials, space.size())
        if total < self.trials and not candidates:
            log.warning("the search space holds %d configurations: searching all of them, "
                        "not %d", total, self.trials)
        plan, scheduler, marks = self._schedule(n_chunks, total)
        run_dir.mkdir(parents=True, exist_ok=True)
        study_path = run_dir / "optuna.db"
        study_path.unlink(missing_ok=True)  # a replay must not see the trials of an earlier try
        storage = f"sqlite:///{study_path.resolve()}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            storage=storage, study_name=f"promptsearch-{task.name}", direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=self.seed, constant_liar=True,
                                               n_startup_trials=TPE_STARTUP_TRIALS))
        searcher = StudySearcher(
            study=study, suggest=space.suggest, plan=plan, points_to_evaluate=points,
            identity=lambda p: config_identity(space.to_config(task, p).to_dict()),
            n_chunks=n_chunks)
        tune_dir = (run_dir / "tune").resolve()
        shutil.rmtree(tune_dir / "search", ignore_errors=True)  # a replay starts afresh
        tune_dir.mkdir(parents=True, exist_ok=True)
        final = FinalRows(baseline=dict(points[0]), test=list(test)) if test else None
        evaluator = start_evaluator(task.name, space, chunks, fewshot, pool, directory=tune_dir,
                                    final=final, metric=self.metric, judge=judge)
        trainable = tune.with_parameters(run_trial, evaluator=evaluator, milestones=marks,
                                         n_chunks=n_chunks)
        # Trials only wait on the evaluator: engines hold the cores. A memory-only request
        # lets them run beside engines that use every CPU.
        trainable = tune.with_resources(trainable, {"CPU": 0, "memory": 64 * 2**20,
                                                    **_driver_node_resource()})
        _quiet_tune()
        trial_log = _trial_log()
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                # The limiter only tells Tune how many trials may wait to start at once; the
                # searcher decides when a bracket begins.
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=2 * max(plan.sizes)),
                scheduler=scheduler, time_budget_s=self.time_budget_s,
                num_samples=total,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                reuse_actors=True),  # no new process per trial
            run_config=tune.RunConfig(
                name="search", storage_path=str(tune_dir), verbose=0,
                callbacks=[*callbacks, trial_log],
                failure_config=tune.FailureConfig(max_failures=self.max_failures)),
        )
        try:
            grid = tuner.fit()
            failed = ray.get(evaluator.drain.remote())
            judge_cost = ray.get(evaluator.judge_cost.remote()) if judge is not None else None
            if failed:
                log.warning("%d early final-run batches failed; the final run makes them", failed)
        finally:
            ray.kill(evaluator, no_restart=True)
        searcher.finish()
        results = {Path(r.path).name.split("_")[1]: r for r in grid}
        records = []
        for outcome in searcher.outcomes:
            result = results.get(outcome.trial_id or "")
            config = space.to_config(task, outcome.params).to_dict()
            if result is None:  # a repeat, never run
                records.append(TrialRecord(
                    number=outcome.number, params=outcome.params, config=config,
                    state=outcome.state, score=None, chunk_scores=[],
                    duplicate_of=outcome.duplicate_of))
                continue
            record = self._record(outcome.number, result, outcome.params, config,
                                  outcome.state)
            record.failures = trial_log.failures(Path(result.path).name)
            records.append(record)
        if not records or records[0].params != points[0]:
            raise RuntimeError("the baseline did not run as the first trial")
        complete = [r for r in records if r.state == "complete"]
        if not complete:
            errors = "; ".join(sorted({r.error or "" for r in records if r.error}))[:500]
            raise UserError(f"no trial finished the validation split ({errors or 'time budget'})")
        best = max(complete, key=lambda r: (r.score, -r.number))
        return SearchResult(trials=records, best=best, baseline=records[0],
                            best_config=space.to_config(task, best.params),
                            baseline_config=baseline, study_storage=storage,
                            tune_dir=tune_dir / "search",
                            metadata={"exhausted": searcher.exhausted,
                                      "judge_cost": judge_cost})

    def _schedule(self, n_chunks: int, total: int) -> tuple[BracketPlan, Any, list[int]]:
        """The bracket plan, Tune's scheduler, and the chunks at which it decides."""
        from ray.tune.schedulers import ASHAScheduler

        marks = milestones(n_chunks, self.reduction_factor)
        if self.scheduler == "asha":
            size = max(1, self.concurrency)
            plan = BracketPlan([min(size, total - i) for i in range(0, total, size)],
                               overlap=False)
            return plan, ASHAScheduler(time_attr="chunk", metric="score", mode="max",
                                       max_t=n_chunks, grace_period=1,
                                       reduction_factor=self.reduction_factor), marks
        if self.scheduler != "halving":
            raise UserError(f"scheduler: unknown {self.scheduler!r}; use 'halving' or 'asha'")
        size = bracket_size(n_chunks, self.reduction_factor)
        # Without a cut before the last chunk there is no first rung to wait for.
        plan = BracketPlan([min(size, total - i) for i in range(0, total, size)],
                           overlap=len(marks) > 1, startup=TPE_STARTUP_TRIALS)
        return plan, SyncHalvingScheduler(plan=plan, max_t=n_chunks,
                                          reduction_factor=self.reduction_factor), marks

    @staticmethod
    def _record(number: int, result: Any, params: dict[str, Any], config: dict[str, Any],
                state: str) -> TrialRecord:
        # The last report carries the whole run of chunk scores and counts (Tune's metrics
        # frame would hold only the reports since a trial's last restore).
        report = TrialReport.from_result(result.metrics)
        if result.error is not None:
            state = "error"
        return TrialRecord(
            number=number, params=dict(params), config=config,
            state=state, score=report.score if report and state != "error" else None,
            chunk_scores=list(report.chunk_scores) if report else [],
            **({k: getattr(report, k) for k in COUNTS} if report else {}),
            seconds=float((result.metrics or {}).get("time_total_s", 0.0)),
            error=None if result.error is None else last_line(result.error))


def _quiet_tune() -> None:
    """Tune's banners, TensorBoard hint and notices are not promptsearch's: without ``-v``
    the terminal shows our progress lines only (Tune's errors still show)."""
    import os

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the legacy reporter is silent at verbose=0
    # Ctrl-C interrupts the run (which says how to resume) instead of Tune ending the
    # experiment early and the run reporting that no trial finished.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        for name in ("ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _driver_node_resource() -> dict[str, float]:
    """A sliver of the driver node's own resource, which pins every trial to that node:
    trial checkpoints then go to the run directory's disk, and no node needs shared storage."""
    import ray

    node = f"node:{ray.util.get_node_ip_address()}"
    return {node: 0.001} if node in ray.cluster_resources() else {}


def _trial_log() -> Any:
    from ray.tune import Callback

    class TrialLog(Callback):
        """Each trial's failed attempts (recovered or not), by directory name: Tune's
        results do not count the attempts it retried."""

        def __init__(self) -> None:
            self.failed: list[str] = []

        def failures(self, name: str) -> int:
            return self.failed.count(name)


        def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                             **info: Any) -> None:
            self.failed.append(_trial_name(trial))

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                           **info: Any) -> None:
            self.failed.append(_trial_name(trial))

    return TrialLog()


def _trial_name(trial: Any) -> str:
    config = trial.config
    return f"trial_{trial.trial_id}_{config.get('template', '')}_k{config.get('k', 0)}"


