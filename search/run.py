"""``promptsearch run``: search on validation, then the best configuration on test.

Run directory (every file written atomically; ``summary.json`` last, so its presence means
the run finished)::

    run.yaml            every input of the run (what --resume replays)
    space.yaml          the search space used
    best.yaml, baseline.yaml
    trials.parquet      every trial: parameters, score per chunk, final score, cost, state
    predictions/{validation,test}.{parquet,jsonl}             the best configuration's
    predictions/baseline/{validation,test}.{parquet,jsonl}    the baseline's
    report.md, *.png    baseline vs best (with a paired bootstrap interval), top trials,
                        parameter effects, plots
    optuna.db           the Optuna study (optuna-dashboard sqlite:///optuna.db)
    tune/search/        the Tune experiment
    library.log         what Ray, Tune, Optuna, vLLM, ... logged in the driver (appended)
    summary.json

``RUN_FILES`` and ``RUN_DIRS`` list them: ``--force`` deletes those and nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptsearch.pipelines.data.taskdata import TaskData, load_task_data
from promptsearch.pipelines.data.writers import (
    remove_stale_temporaries,
    write_json,
    write_jsonl,
    write_parquet,
    write_table,
    write_text,
)
from promptsearch.pipelines.engine.pool import EnginePool
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.evaluate import EvalJob, EvalResult, evaluate_many
from promptsearch.pipelines.judge import JUDGE_PROMPT_VERSION
from promptsearch.pipelines.judge.setup import check_judge, check_judge_options, open_judge
from promptsearch.pipelines.prompting.prompts import demo_pool
from promptsearch.pipelines.tasks import TASK_DIR, load_task
from promptsearch.search.driver import PromptSearch, SearchResult
from promptsearch.search.halving import planned_chunk_runs
from promptsearch.search.library_log import LIBRARY_LOG, writes_library_log
from promptsearch.search.report import write_interval_plot, write_plots, write_report
from promptsearch.search.runtime import count_tokens, load_tokenizer
from promptsearch.search.space import SearchSpace
from promptsearch.search.spec import RunSpec, check_inputs_unchanged

__all__ = ["RunPlan", "RunSpec", "execute_run", "plan_run", "prepare_run_dir"]

log = logging.getLogger(__name__)


RUN_FILES: tuple[str, ...] = (
    "run.yaml", "space.yaml", "best.yaml", "baseline.yaml", "trials.parquet", "report.md",
    "summary.json", "fewshot.jsonl", "optuna.db", "optuna.db-journal", "optuna.db-wal",
    "optuna.db-shm",
    "optimization_history.png", "param_importances.png", "score_by_template.png",
    "score_by_k.png", "best_minus_baseline.png", LIBRARY_LOG,
    *(f"predictions/{who}{split}{suffix}" for who in ("", "baseline/")
      for split in ("validation", "test") for suffix in (".parquet", ".jsonl")),
)
"""Every file a run writes, relative to its directory: what ``--force`` may delete."""
_ATOMIC_FILES = (*RUN_FILES, "tune/evaluator-inputs.pkl")
"""Files written through ``atomic_path``, whose stale temporaries a run clears."""
RUN_DIRS: tuple[str, ...] = ("tune",)
"""Directories a run owns whole (the Tune experiment, the evaluator's inputs)."""
_RUN_SUBDIRS = ("predictions/baseline", "predictions")
"""Removed by ``--force`` only once empty (they may hold the user's own files)."""


def run_outputs(run_dir: Path) -> list[Path]:
    """The files and directories of a previous run present in ``run_dir``, temporaries of a
    killed writer included."""
    from promptsearch.pipelines.data.writers import stale_temporaries

    found = [run_dir / name for name in (*RUN_FILES, *RUN_DIRS) if (run_dir / name).exists()
             or (run_dir / name).is_symlink()]
    return found + stale_temporaries(run_dir, RUN_FILES)


def prepare_run_dir(out: Path | None, task: str, *, force: bool,
                    inputs: list[Path] | None = None) -> Path:
    """A new run directory; refuse to write where anything is unless forced.

    ``force`` deletes the files a previous run wrote there (``RUN_FILES``, ``RUN_DIRS``) and
    nothing else; in a directory that is not a run it writes beside the files there, and
    refuses if one of them has the name of a file the run writes. Neither ever deletes one of
    the run's ``inputs``. A mistyped ``--out . --force`` costs nothing.
    """
    from promptsearch.pipelines.data.writers import same_file

    run_dir = out or Path("runs") / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir}: exists and is not a directory; choose another path")
    if run_dir.exists() and any(run_dir.iterdir()):
        is_run = (run_dir / "run.yaml").is_file()
        if is_run and not force:
            raise UserError(f"--out {run_dir}: already holds a run; use --resume {run_dir} to "
                            "finish it, or --force to start over")
        if not force:
            raise UserError(f"--out {run_dir}: exists and is not a promptsearch run; choose "
                            "another directory or pass --force to write the run into it")
        previous = run_outputs(run_dir)
        if not is_run and previous:
            raise UserError(f"--out {run_dir}: not a promptsearch run, yet it holds "
                            f"{previous[0].relative_to(run_dir)}, a name the run writes; "
                            "--force deletes only a previous run's files: choose another "
                            "directory")
        for path in previous:
            for source in inputs or []:
                if same_file(path, source) or (path.is_dir() and not path.is_symlink()
                                               and path.resolve() in source.resolve().parents):
                    raise UserError(f"--force: {path} is an input of this run ({source}) and "
                                    f"--force would delete it; move it out of {run_dir} or "
                                    "choose another --out")
        for path in previous:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for sub in _RUN_SUBDIRS:
            with contextlib.suppress(OSError):
                (run_dir / sub).rmdir()  # only if empty
        if is_run:
            kept = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                          if not p.is_dir())
            what = (f"kept {len(kept)} file(s) promptsearch did not write: "
                    f"{_listing(kept)}" if kept else "nothing else was there")
            print(f"--force: removed the previous run in {run_dir} "
                  f"({_listing([str(p.relative_to(run_dir)) for p in previous])}); {what}",
                  file=sys.stderr, flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _listing(names: list[str], shown: int = 6) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


@dataclass
class RunPlan:
    """A run's inputs, loaded and checked; building one writes nothing."""

    spec: RunSpec
    task: Any
    data: TaskData
    space: SearchSpace
    space_text: str
    fewshot: list[dict[str, Any]]


def plan_run(spec: RunSpec, run_dir: Path | None = None) -> RunPlan:
    """Load and check every input (task, data, space, few-shot pool, model, prompt lengths)
    before anything runs: bad input must not cost an engine start."""
    task = load_task(spec.task)
    if spec.metric is not None:
        task.metric(spec.metric)
    check_judge_options(task, spec.judge, spec.judge_url, spec.judge_model)
    data = load_task_data(task, spec.data, seed=spec.seed, max_validation=spec.max_validation,
                          max_test=spec.max_test)
    if spec.judge_url:  # a judge server is checked before any engine starts
        with open_judge(judge=None, url=spec.judge_url, model=spec.judge_model) as judge:
            check_judge(judge, data.validation[:2])
    if run_dir is not None and (run_dir / "space.yaml").is_file():
        source = run_dir / "space.yaml"
    else:
        source = Path(spec.space) if spec.space else TASK_DIR / f"{task.name}.space.yaml"
    space = SearchSpace.load(task, source)
    fewshot = demo_pool(task, data.fewshot)
    if not fewshot and any(space.k):
        space = dataclasses.replace(space, k=[0])
        print(f"{data.source}: no few-shot example has an answer ({task.answer_field!r}), so "
              "the search runs zero-shot (fewshot.k=0)", file=sys.stderr, flush=True)
    too_big = [k for k in space.k if k > len(fewshot)]
    if too_big:
        raise UserError(f"{source}: fewshot.k={max(too_big)} but the few-shot pool has only "
                        f"{len(fewshot)} examples with answers")
    tokenizer = load_tokenizer(spec.model)
    fingerprints = check_inputs_unchanged(spec, where=str(run_dir / "run.yaml") if run_dir
                                          else "run.yaml")
    runnable = space if tokenizer.chat_template is not None else space.without_chat(task)
    check_prompts_fit(task, runnable, [*data.validation, *data.test], fewshot,
                      tokenizer=tokenizer, max_model_len=spec.max_model_len,
                      where=data.source)
    return RunPlan(spec=spec.replace(fingerprints=fingerprints), task=task, data=data, space=space,
                   space_text=source.read_text(encoding="utf-8"), fewshot=fewshot)


@writes_library_log
def execute_run(plan: RunPlan, run_dir: Path, *, verbose: bool = False,
                pool: EnginePool | None = None) -> dict[str, Any]:
    """The whole job; safe to call again on the same directory (a replay from the cache).

    ``pool``: an engine pool to use and leave running (the tests' session pool), instead of
    starting one for this run.
    """
    from promptsearch.search.progress import ProgressLine, trial_progress
    from promptsearch.search.runtime import init_ray

    started = time.perf_counter()
    spec, task, data, fewshot = plan.spec, plan.task, plan.data, plan.fewshot
    remove_stale_temporaries(run_dir, _ATOMIC_FILES)  # a driver killed mid-write leaves them

    def line(config: str, split: str, rows: int) -> ProgressLine:
        return ProgressLine(f"{config} on {split}", rows, final_run={
            "task": task.name, "model": spec.model, "split": split, "config": config})

    spec.save(run_dir)  # first: from here on the directory is a run that --force may clear
    write_text(run_dir / "space.yaml", plan.space_text)
    # The demos the configurations may show: serve renders from this file, so a finished run
    # needs neither the original data nor the split rule.
    write_jsonl(run_dir / "fewshot.jsonl", fewshot)
    searcher = PromptSearch(trials=spec.trials, concurrency=spec.concurrency or 1,
                            chunks=spec.chunks, seed=spec.seed, time_budget_s=spec.time_budget_s,
                            scheduler=spec.scheduler, max_failures=spec.trial_retries,
                            metric=searched_metric(spec, task))
    init_ray(verbose=verbose)
    with _engine_pool(spec, pool) as pool, open_judge(
            judge=spec.judge, url=spec.judge_url, model=spec.judge_model, run_pool=pool,
            max_model_len=spec.max_model_len) as judge:
        space = plan.space if pool.has_chat_template else plan.space.without_chat(task)
        check_prompts_fit(task, space, [*data.validation, *data.test], fewshot,
                          tokenizer=pool.tokenizer, max_model_len=pool.config.max_model_len)
        print_budget(spec, space, data.validation, pool)
        if judge is not None:
            print_judge_budget(judge, spec, space, data)
            if judge.kind == "engine":
                check_judge(judge, data.validation[:2])
        n_chunks = min(spec.chunks, len(data.validation))
        pool.engine_stats(reset=True)
        search_start = time.perf_counter()
        result = searcher.search(task, space=space, validation=data.validation,
                                 fewshot=fewshot, pool=pool, run_dir=run_dir, test=data.test,
                                 judge=judge,
                                 callbacks=[trial_progress(min(spec.trials, space.size()),
                                                           n_chunks, task=task.name,
                                                           model=spec.model)])
        engines = _engine_use(pool.engine_stats(), time.perf_counter() - search_start)
        # One stream for the engines: best and baseline, each on validation and test. The
        # baseline runs on every validation row (the search may have pruned it after one
        # chunk) so that best - baseline is compared row by row (``pipelines/metrics/stats.py``).
        jobs = [EvalJob(config, split) for config in (result.best_config, result.baseline_config)
                for split in (data.validation, data.test)]
        rows = sum(len(job.examples) for job in jobs)
        finals = evaluate_many(task, jobs, pool=pool, fewshot=fewshot, judge=judge,
                               progress=line("best and baseline", "validation and test", rows))
        if judge is not None:
            result.metadata["judge"] = judge_summary(judge, result.metadata.get("judge_cost"),
                                                     finals)
        final = {"validation": finals[0], "test": finals[1]}
        baseline = {"validation": finals[2], "test": finals[3]}
        cache = pool.cache_stats()
        model_loads = pool.load_counts()
    return write_outputs(run_dir, spec, task, data.source, result, final, baseline,
                         cache, model_loads, time.perf_counter() - started, engines)


def print_judge_budget(judge: Any, spec: RunSpec, space: SearchSpace, data: TaskData) -> None:
    """The judge's share of the budget: one grade per generated answer, a second call for
    an unparsable one."""
    trials = min(spec.trials, space.size())
    grades = trials * len(data.validation) + 2 * (len(data.validation) + len(data.test))
    print(f"judge: {judge.name} ({judge.kind}, prompt v{JUDGE_PROMPT_VERSION}) grades every "
          f"answer: at most {grades} grades (an unparsable one is asked twice); the cache "
          "cuts repeats", file=sys.stderr, flush=True)


def judge_summary(judge: Any, search_cost: dict[str, Any] | None,
                  finals: list[EvalResult]) -> dict[str, Any]:
    """``summary.json``'s ``judge``: who graded, with which rubric, how often it gave no
    grade, and what grading cost (search and final run)."""
    from promptsearch.pipelines.judge import JudgeCost

    final_cost = JudgeCost()
    for result in finals:
        if result.judge is not None:
            final_cost.add(result.judge)
    total = JudgeCost(**{k: v for k, v in (search_cost or {}).items()})
    total.add(final_cost)
    return {**judge.describe(),
            "unparsable_percent": {"validation": finals[0].metrics.get("judge_unparsable"),
                                   "test": finals[1].metrics.get("judge_unparsable")},
            "cost": {"search": search_cost, "final": final_cost.to_dict(),
                     "total": total.to_dict()}}


def searched_metric(spec: RunSpec, task: Any) -> str:
    """What the search maximises: ``--metric``, else the task's primary metric."""
    return spec.metric or task.primary_metric


def _engine_use(stats: list[Any], seconds: float) -> dict[str, Any]:
    """How full the search kept the engines (``summary.json``'s ``search_engines``)."""
    return {"seconds": round(seconds, 1),
            "busy_fraction": [round(s.busy_seconds / max(seconds, 1e-9), 3) for s in stats],
            "peak_in_flight": [s.peak_in_flight for s in stats],
            "requests": [s.requests for s in stats],
            "output_tokens": [s.output_tokens for s in stats]}


@contextlib.contextmanager
def _engine_pool(spec: RunSpec, pool: EnginePool | None) -> Iterator[EnginePool]:
    """``pool`` if given (its owner shuts it down), else a new one for this run."""
    from promptsearch.search.runtime import engine_pool

    if pool is not None:
        yield pool
        return
    with engine_pool(spec.model, spec.engines, spec.cpus_per_engine, spec.tensor_parallel_size,
                     spec.max_model_len, cache=True) as own:
        yield own


def check_prompts_fit(task: Any, space: SearchSpace, examples: list[dict[str, Any]],
                      fewshot: list[dict[str, Any]], *, tokenizer: Any, max_model_len: int,
                      where: str = "search space") -> None:
    """Every prompt the space can make must fit the context with room for ``max_tokens``.

    Per template (and chat setting): the example whose query is longest in tokens, with the
    largest k and the longest demos, plus the largest max_tokens. Rendering each template
    here also surfaces a template error before any trial.
    """
    from promptsearch.pipelines.prompting.config import FewShot
    from promptsearch.pipelines.prompting.prompts import render_requests

    k, max_tokens = max(space.k), max(space.max_tokens)
    demos = _longest_first(task, fewshot)
    for name in space.templates:
        for chat in sorted(set(space.chat)):
            config = space.to_config(task, {"template": name, "k": 0, "temperature": 0.0,
                                            "max_tokens": max_tokens, "repetition_penalty": 1.0,
                                            "stop": next(iter(space.stop)),
                                            "parse": next(iter(space.parse)), "chat": chat})
            queries = count_tokens(tokenizer, render_requests(task, config, examples, []))
            longest = examples[max(range(len(examples)), key=queries.__getitem__)]
            config = config.replace(fewshot=FewShot(k=k, selector="first"))
            request = render_requests(task, config, [longest], demos)[0]
            prompt = count_tokens(tokenizer, [request])[0]
            if prompt + max_tokens > max_model_len:
                shot = f" and k={k} demos" if k else ""
                via = " through the chat template" if chat else ""
                raise UserError(
                    f"{where}: example {task.example_id(longest)} with template {name!r}{shot}"
                    f"{via} needs {prompt + max_tokens} tokens ({prompt} prompt + "
                    f"{max_tokens} max_tokens) but the context is {max_model_len}; shorten the "
                    "example, lower fewshot.k or max_tokens in the search space, or raise "
                    "--max-model-len")


def _longest_first(task: Any, pool: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pool, key=lambda e: -sum(len(str(e.get(f, ""))) for f in task.input_fields))


def print_budget(spec: RunSpec, space: SearchSpace, validation: list[dict[str, Any]],
                 pool: EnginePool) -> None:
    max_tokens = max(space.max_tokens)
    trials = min(spec.trials, space.size())
    gens = trials * len(validation)
    plan = ""
    if spec.scheduler == "halving":
        chunks = min(spec.chunks, len(validation))
        planned = planned_chunk_runs(trials, chunks, PromptSearch.reduction_factor)
        plan = f"successive halving plans ~{round(planned * len(validation) / chunks)}; "
    print(f"budget: {trials} trials x {len(validation)} validation examples = at most "
          f"{gens} generations (~{gens * max_tokens} output tokens at max_tokens={max_tokens}); "
          f"{plan}the cache cuts repeats; {pool.engines} engine(s)", file=sys.stderr, flush=True)


def write_outputs(run_dir: Path, spec: RunSpec, task: Any, source: str, result: SearchResult,
                  final: dict[str, EvalResult], baseline: dict[str, EvalResult],
                  cache: dict[str, int], model_loads: list[int],
                  wall: float, engines: dict[str, Any]) -> dict[str, Any]:
    metric = searched_metric(spec, task)
    paths, baseline_paths = {}, {}
    for split in final:
        parquet, jsonl = write_table(run_dir / "predictions" / split, final[split].rows)
        paths[split] = [str(parquet), str(jsonl)]
        parquet, jsonl = write_table(run_dir / "predictions" / "baseline" / split,
                                     baseline[split].rows)
        baseline_paths[split] = [str(parquet), str(jsonl)]
    write_parquet(run_dir / "trials.parquet", [dataclasses.asdict(t) for t in result.trials])
    result.best_config.save(run_dir / "best.yaml")
    result.baseline_config.save(run_dir / "baseline.yaml")
    test_best = final["test"].metrics.get(metric)
    test_base = baseline["test"].metrics.get(metric)
    states = [t.state for t in result.trials]
    final_results = [*final.values(), *baseline.values()]
    summary: dict[str, Any] = {
        "task": task.name, "model": spec.model, "data": source, "metric": metric,
        "baseline": {"validation": baseline["validation"].metrics.get(metric),
                     "validation_search": result.baseline.score, "test": test_base,
                     "metrics_validation": baseline["validation"].metrics,
                     "metrics_test": baseline["test"].metrics, "predictions": baseline_paths},
        "best": {"validation": final["validation"].metrics.get(metric), "test": test_best,
                 "trial": result.best.number,
                 "metrics_validation": final["validation"].metrics,
                 "metrics_test": final["test"].metrics},
        "gain_test": None if test_best is None or test_base is None else test_best - test_base,
        "best_minus_baseline": {
            split: best_minus_baseline(task, metric, final[split], baseline[split],
                                       seed=spec.seed)
            for split in ("validation", "test")},
        "trials": {"run": len(states) - states.count("duplicate"),
                   "complete": states.count("complete"), "pruned": states.count("pruned"),
                   "error": states.count("error"), "duplicate": states.count("duplicate")},
        "generations": sum(t.generations for t in result.trials)
        + sum(r.generations for r in final_results),
        "cache": {"hits": cache.get("hits", 0), "misses": cache.get("misses", 0)},
        # Rows the final run had to generate; the rest the search made early (evaluator.py).
        "final_run": {"rows": sum(len(r.rows) for r in final_results),
                      "generated": sum(r.generations - r.cached for r in final_results)},
        "model_loads": model_loads,  # per engine; above 1 where Ray restarted a dead engine
        "search_engines": engines,
        "wall_seconds": round(wall, 1),
        "predictions": paths,
    }
    if result.metadata.get("judge"):
        summary["judge"] = result.metadata["judge"]
    plots = write_plots(result, run_dir) + write_interval_plot(run_dir, summary)
    write_report(run_dir, result, summary, plots)
    write_json(run_dir / "summary.json", summary)
    return summary


def best_minus_baseline(task: Any, metric: str, best: EvalResult, baseline: EvalResult, *,
                        seed: int) -> dict[str, Any] | None:
    """Paired bootstrap interval of best - baseline on ``metric`` from the per-row scores
    (``summary.json``'s ``best_minus_baseline``); None where the split has no references."""
    from promptsearch.pipelines.metrics.stats import metric_difference

    if metric not in best.metrics or metric not in baseline.metrics:
        return None
    # A row a judge gave no grade on either side has no difference to resample (task open).
    pairs = [(b, a) for b, a in zip(best.rows, baseline.rows, strict=True)
             if b.get(metric, 0) is not None and a.get(metric, 0) is not None]
    if not pairs:
        return None
    return metric_difference([b for b, _ in pairs], [a for _, a in pairs], metric=metric,
                             aggregate=task.aggregate, seed=seed).to_dict()
