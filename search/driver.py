"""``PromptSearch``: Ray Tune + OptunaSearch (seeded TPE) + early stopping over validation
chunks, by synchronous successive halving (the default, see ``halving.py``) or ASHA.

The baseline configuration is the first trial. Trials share the engine pool the driver built;
with the default concurrency of 1 the trial sequence is a function of the seed alone, which is
what makes ``--resume`` (a replay served from the generation cache) give the same result.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptsearch.pipelines.config import PromptConfig
from promptsearch.pipelines.errors import UserError, last_line
from promptsearch.pipelines.pool import EnginePool
from promptsearch.pipelines.tasks import Task
from promptsearch.search.slots import SlotLimiter, TrialSlots
from promptsearch.search.space import SearchSpace
from promptsearch.search.trial import run_trial, validation_chunks

log = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    number: int
    params: dict[str, Any]
    config: dict[str, Any]
    state: str
    """``complete`` (every chunk), ``pruned`` (stopped early by the scheduler) or ``error``."""
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
    concurrency: int = 1
    chunks: int = 4
    seed: int = 0
    time_budget_s: float | None = None
    reduction_factor: int = 3
    """The scheduler keeps the best 1/reduction_factor of trials at each rung (eta)."""
    scheduler: str = "halving"
    """``halving`` (synchronous successive halving: cheapest when trials run one at a time)
    or ``asha`` (asynchronous: for many concurrent trials on a large cluster)."""
    max_failures: int = 1
    """Retries of a trial that raised or whose process died (a failed trial has no score:
    it is never counted as 0)."""

    def search(self, task: Task, *, space: SearchSpace, validation: Sequence[dict[str, Any]],
               fewshot: Sequence[dict[str, Any]], pool: EnginePool, run_dir: Path,
               callbacks: Sequence[Any] = (),
               candidates: Sequence[dict[str, Any]] | None = None) -> SearchResult:
        """Search ``self.trials`` configurations; or exactly ``candidates`` (Optuna params,
        the baseline's first), in order, when given."""
        import optuna
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        baseline = PromptConfig.baseline(task)
        points = list(candidates) if candidates else [space.params_of(baseline)]
        chunks = validation_chunks(list(validation), self.chunks)
        study_path = run_dir / "optuna.db"
        study_path.unlink(missing_ok=True)  # a replay must not see the trials of an earlier try
        storage = f"sqlite:///{study_path.resolve()}"
        searcher = OptunaSearch(
            space=space.suggest, metric="score", mode="max",
            sampler=optuna.samplers.TPESampler(seed=self.seed),
            points_to_evaluate=points,
            storage=optuna.storages.RDBStorage(storage), study_name=f"promptsearch-{task.name}")
        num_samples = len(points) if candidates else self.trials
        slots = TrialSlots(limit=self.concurrency)
        scheduler = self._scheduler(len(chunks), num_samples, slots)
        trainable = tune.with_parameters(run_trial, pool=pool, task_name=task.name, space=space,
                                         chunks=chunks, fewshot=list(fewshot))
        # Trials only render, parse and score: engines hold the cores. A memory-only request
        # lets trials run beside engines that use every CPU.
        trainable = tune.with_resources(trainable, {"CPU": 0, "memory": 256 * 2**20,
                                                    **_driver_node_resource()})
        trial_log = _trial_log()
        limiter = SlotLimiter(searcher, slots)
        tune_dir = (run_dir / "tune").resolve()
        shutil.rmtree(tune_dir / "search", ignore_errors=True)  # a replay starts afresh
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=limiter,
                scheduler=scheduler, time_budget_s=self.time_budget_s,
                num_samples=num_samples,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                reuse_actors=True),  # no new process (and imports) per trial
            run_config=tune.RunConfig(
                name="search", storage_path=str(tune_dir), verbose=0,
                callbacks=[*callbacks, trial_log],
                failure_config=tune.FailureConfig(max_failures=self.max_failures)),
        )
        grid = tuner.fit()
        # Number trials in the order they were suggested; the grid's own order moves a
        # trial that was retried.
        if len(limiter.suggested) != len(grid):
            raise RuntimeError("Tune ran a copy of the search algorithm")
        results = sorted(grid, key=lambda r: limiter.position(Path(r.path).name.split("_")[1]))
        records = []
        for number, result in enumerate(results):
            name = Path(result.path).name
            records.append(self._record(number, result, result.config or trial_log.configs[name],
                                        task, space, len(chunks)))
            records[-1].failures = trial_log.failures(name)
        if not records or records[0].params != space.params_of(baseline):
            raise RuntimeError("the baseline did not run as the first trial")
        complete = [r for r in records if r.state == "complete"]
        if not complete:
            errors = "; ".join(sorted({r.error or "" for r in records if r.error}))[:500]
            raise UserError(f"no trial finished the validation split ({errors or 'time budget'})")
        best = max(complete, key=lambda r: (r.score, -r.number))
        return SearchResult(trials=records, best=best, baseline=records[0],
                            best_config=space.to_config(task, best.params),
                            baseline_config=baseline, study_storage=storage,
                            tune_dir=tune_dir / "search")

    def _scheduler(self, n_chunks: int, num_samples: int, slots: TrialSlots) -> Any:
        from ray.tune.schedulers import ASHAScheduler

        from promptsearch.search.halving import SyncHalvingScheduler

        if self.scheduler == "asha":
            return ASHAScheduler(time_attr="chunk", metric="score", mode="max", max_t=n_chunks,
                                 grace_period=1, reduction_factor=self.reduction_factor)
        if self.scheduler != "halving":
            raise UserError(f"scheduler: unknown {self.scheduler!r}; use 'halving' or 'asha'")
        return SyncHalvingScheduler(time_attr="chunk", metric="score", mode="max",
                                    max_t=n_chunks, reduction_factor=self.reduction_factor,
                                    num_samples=num_samples, slots=slots)

    @staticmethod
    def _record(number: int, result: Any, params: dict[str, Any], task: Task,
                space: SearchSpace, n_chunks: int) -> TrialRecord:
        # The last report carries the whole run of chunk scores and counts (Tune's metrics
        # frame would hold only the reports since a trial's last restore).
        last = dict(result.metrics or {})
        if "score" not in last:  # died before its first report
            last = {}
        params = dict(params)
        if result.error is not None:
            state = "error"
        elif last.get("chunk") == n_chunks:
            state = "complete"
        else:
            state = "pruned"
        return TrialRecord(
            number=number, params=params, config=space.to_config(task, params).to_dict(),
            state=state, score=None if state == "error" else last.get("score"),
            chunk_scores=list(last.get("chunk_scores", [])),
            generations=int(last.get("generations", 0)), cached=int(last.get("cached", 0)),
            prompt_tokens=int(last.get("prompt_tokens", 0)),
            output_tokens=int(last.get("output_tokens", 0)),
            seconds=float(last.get("time_total_s", 0.0)),
            error=None if result.error is None else last_line(result.error))


def _driver_node_resource() -> dict[str, float]:
    """A sliver of the driver node's own resource, which pins every trial to that node:
    trial checkpoints then go to the run directory's disk, and no node needs shared storage."""
    import ray

    node = f"node:{ray.util.get_node_ip_address()}"
    return {node: 0.001} if node in ray.cluster_resources() else {}


def _trial_log() -> Any:
    from ray.tune import Callback

    class TrialLog(Callback):
        """Each trial's configuration and failed attempts (recovered or not), by directory
        name: Tune's results lack the configuration of a trial that died before reporting."""

        def __init__(self) -> None:
            self.configs: dict[str, dict[str, Any]] = {}
            self.failed: list[str] = []

        def failures(self, name: str) -> int:
            return self.failed.count(name)


        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any,
                           **info: Any) -> None:
            self.configs[_trial_name(trial)] = dict(trial.config)

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


