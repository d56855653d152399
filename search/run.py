"""``promptsearch run``: search on validation, then the best configuration on test.

Run directory (every file written atomically; ``summary.json`` last, so its presence means
the run finished)::

    run.yaml            every input of the run (what --resume replays)
    space.yaml          the search space used
    best.yaml, baseline.yaml
    trials.parquet      every trial: parameters, score per chunk, final score, cost, state
    predictions/{validation,test}.{parquet,jsonl}
    report.md, *.png    baseline vs best, top trials, parameter effects, plots
    optuna.db           the Optuna study (optuna-dashboard sqlite:///optuna.db)
    tune/search/        the Tune experiment
    summary.json
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

from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.evaluate import EvalJob, EvalResult, evaluate_many, has_references
from promptsearch.pipelines.models import DEFAULT_MODEL
from promptsearch.pipelines.pool import EnginePool
from promptsearch.pipelines.prompts import demo_pool
from promptsearch.pipelines.taskdata import TaskData, load_task_data
from promptsearch.pipelines.tasks import TASK_DIR, load_task
from promptsearch.pipelines.writers import (
    remove_stale_temporaries,
    write_json,
    write_parquet,
    write_table,
    write_text,
)
from promptsearch.search.driver import PromptSearch, SearchResult
from promptsearch.search.halving import planned_chunk_runs
from promptsearch.search.report import write_plots, write_report
from promptsearch.search.space import SearchSpace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    """Every input of a run; saved as ``run.yaml`` so that the run can be repeated."""

    task: str
    model: str = DEFAULT_MODEL
    data: str | None = None
    space: str | None = None
    trials: int = 16
    seed: int = 0
    chunks: int = 4
    concurrency: int | None = None
    """With ``scheduler: asha``, trials run together (default 1); halving runs each
    bracket's trials together."""
    scheduler: str = "halving"
    trial_retries: int = 1
    time_budget_s: float | None = None
    engines: int | None = None
    cpus_per_engine: int = 1
    tensor_parallel_size: int = 1
    max_model_len: int = 4096
    max_validation: int | None = None
    max_test: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.scheduler != "asha":
            raise UserError("concurrency applies to scheduler asha; halving runs each "
                            "bracket's trials together")

    @classmethod
    def load(cls, run_dir: Path) -> RunSpec:
        from promptsearch.pipelines.readers import read_yaml

        path = run_dir / "run.yaml"
        if not path.is_file():
            raise UserError(f"--resume {run_dir}: no run.yaml there; pass the directory of a "
                            "run started by 'promptsearch run'")
        data = read_yaml(path)
        if not isinstance(data, dict) or not isinstance(data.get("task"), str):
            raise UserError(f"{path}: not a run.yaml written by 'promptsearch run' (it needs a "
                            "mapping with a 'task' field); pass the directory of a run")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{path}: unknown field {unknown[0]!r}")
        return cls(**data)

    def save(self, run_dir: Path) -> None:
        import yaml

        write_text(run_dir / "run.yaml", yaml.safe_dump(dataclasses.asdict(self),
                                                        allow_unicode=True, sort_keys=False))


def prepare_run_dir(out: Path | None, task: str, *, force: bool) -> Path:
    """A new run directory; refuse to write where anything is unless forced.

    ``force`` deletes a previous run there; a directory that is not a run keeps its files
    (the run's files are added beside them), so a mistyped ``--out . --force`` costs nothing.
    """
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
        if is_run:
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


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
    data = load_task_data(task, spec.data, seed=spec.seed, max_validation=spec.max_validation,
                          max_test=spec.max_test)
    if run_dir is not None and (run_dir / "space.yaml").is_file():
        source = run_dir / "space.yaml"
    else:
        source = Path(spec.space) if spec.space else TASK_DIR / f"{task.name}.space.yaml"
    space = SearchSpace.load(task, source)
    fewshot = demo_pool(task, data.fewshot)
    too_big = [k for k in space.k if k > len(fewshot)]
    if too_big:
        raise UserError(f"{source}: fewshot.k={max(too_big)} but the few-shot pool has only "
                        f"{len(fewshot)} examples with answers")
    tokenizer = load_tokenizer(spec.model)
    runnable = space if tokenizer.chat_template is not None else space.without_chat(task)
    check_prompts_fit(task, runnable, [*data.validation, *data.test], fewshot,
                      tokenizer=tokenizer, max_model_len=spec.max_model_len,
                      where=data.source)
    return RunPlan(spec=spec, task=task, data=data, space=space,
                   space_text=source.read_text(encoding="utf-8"), fewshot=fewshot)


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
    remove_stale_temporaries(run_dir)  # a driver killed mid-write leaves them

    def line(config: str, split: str, rows: int) -> ProgressLine:
        return ProgressLine(f"{config} on {split}", rows, final_run={
            "task": task.name, "model": spec.model, "split": split, "config": config})

    write_text(run_dir / "space.yaml", plan.space_text)
    spec.save(run_dir)
    searcher = PromptSearch(trials=spec.trials, concurrency=spec.concurrency or 1,
                            chunks=spec.chunks, seed=spec.seed, time_budget_s=spec.time_budget_s,
                            scheduler=spec.scheduler, max_failures=spec.trial_retries)
    init_ray(verbose=verbose)
    with _engine_pool(spec, pool) as pool:
        space = plan.space if pool.has_chat_template else plan.space.without_chat(task)
        check_prompts_fit(task, space, [*data.validation, *data.test], fewshot,
                          tokenizer=pool.tokenizer, max_model_len=pool.config.max_model_len)
        print_budget(spec, space, data.validation, pool)
        n_chunks = min(spec.chunks, len(data.validation))
        pool.engine_stats(reset=True)
        search_start = time.perf_counter()
        result = searcher.search(task, space=space, validation=data.validation,
                                 fewshot=fewshot, pool=pool, run_dir=run_dir,
                                 callbacks=[trial_progress(min(spec.trials, space.size()),
                                                           n_chunks, task=task.name,
                                                           model=spec.model)])
        engines = _engine_use(pool.engine_stats(), time.perf_counter() - search_start)
        # One stream for the engines: best on validation and test, baseline on test.
        jobs = [EvalJob(result.best_config, data.validation),
                EvalJob(result.best_config, data.test)]
        if has_references(task, data.test):
            jobs.append(EvalJob(result.baseline_config, data.test))
        rows = sum(len(job.examples) for job in jobs)
        finals = evaluate_many(task, jobs, pool=pool, fewshot=fewshot,
                               progress=line("best and baseline", "validation and test", rows))
        final = {"validation": finals[0], "test": finals[1]}
        baseline_test = finals[2] if len(finals) > 2 else None
        cache = pool.cache_stats()
        model_loads = pool.load_counts()
    return write_outputs(run_dir, spec, task, data.source, result, final, baseline_test,
                         cache, model_loads, time.perf_counter() - started, engines)


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


def load_tokenizer(model: str) -> Any:
    """``--model``'s tokenizer on the driver, to check it and size prompts before any engine
    starts (the pool reuses it: same resolved path, same process cache)."""
    from promptsearch.pipelines.errors import one_line
    from promptsearch.pipelines.models import resolve_model
    from promptsearch.pipelines.pool import _load_tokenizer

    resolved = resolve_model(model)
    try:
        return _load_tokenizer(resolved)
    except Exception as exc:
        raise UserError(f"--model {model}: cannot load its tokenizer ({one_line(exc)}); point "
                        "it at a Hugging Face model directory with tokenizer files") from None


def count_tokens(tokenizer: Any, requests: list[Any]) -> list[int]:
    """Prompt tokens as the engine will see them."""
    from promptsearch.pipelines.pool import prompt_token_ids

    return [len(ids) for ids in prompt_token_ids(tokenizer, requests)]


def check_prompts_fit(task: Any, space: SearchSpace, examples: list[dict[str, Any]],
                      fewshot: list[dict[str, Any]], *, tokenizer: Any, max_model_len: int,
                      where: str = "search space") -> None:
    """Every prompt the space can make must fit the context with room for ``max_tokens``.

    Per template (and chat setting): the example whose query is longest in tokens, with the
    largest k and the longest demos, plus the largest max_tokens. Rendering each template
    here also surfaces a template error before any trial.
    """
    from promptsearch.pipelines.config import FewShot
    from promptsearch.pipelines.prompts import render_requests

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


def check_config_fits(task: Any, config: Any, examples: list[dict[str, Any]],
                      fewshot: list[dict[str, Any]], *, tokenizer: Any, max_model_len: int,
                      where: str) -> None:
    """Every prompt of one configuration (its own demos per example) must fit the context
    with room for ``max_tokens``: ``eval``'s check, made before any engine starts."""
    from promptsearch.pipelines.prompts import render_requests

    counts = count_tokens(tokenizer, render_requests(task, config, examples, fewshot))
    worst = max(range(len(examples)), key=counts.__getitem__)
    max_tokens = config.sampling.max_tokens
    if counts[worst] + max_tokens > max_model_len:
        raise UserError(
            f"{where}: example {task.example_id(examples[worst])} needs "
            f"{counts[worst] + max_tokens} tokens ({counts[worst]} prompt + {max_tokens} "
            f"max_tokens) with template {config.template!r} but the context is "
            f"{max_model_len}; shorten the example, lower fewshot.k or max_tokens, or raise "
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
                  final: dict[str, EvalResult], baseline_test: EvalResult | None,
                  cache: dict[str, int], model_loads: list[int],
                  wall: float, engines: dict[str, Any]) -> dict[str, Any]:
    metric = task.primary_metric
    paths = {}
    for split, res in final.items():
        parquet, jsonl = write_table(run_dir / "predictions" / split, res.rows)
        paths[split] = [str(parquet), str(jsonl)]
    write_parquet(run_dir / "trials.parquet", [dataclasses.asdict(t) for t in result.trials])
    result.best_config.save(run_dir / "best.yaml")
    result.baseline_config.save(run_dir / "baseline.yaml")
    test_best = final["test"].metrics.get(metric)
    test_base = baseline_test.metrics.get(metric) if baseline_test else None
    states = [t.state for t in result.trials]
    summary: dict[str, Any] = {
        "task": task.name, "model": spec.model, "data": source, "metric": metric,
        "baseline": {"validation": result.baseline.score, "test": test_base,
                     "metrics_test": baseline_test.metrics if baseline_test else {}},
        "best": {"validation": final["validation"].metrics.get(metric), "test": test_best,
                 "trial": result.best.number,
                 "metrics_validation": final["validation"].metrics,
                 "metrics_test": final["test"].metrics},
        "gain_test": None if test_best is None or test_base is None else test_best - test_base,
        "trials": {"run": len(states) - states.count("duplicate"),
                   "complete": states.count("complete"), "pruned": states.count("pruned"),
                   "error": states.count("error"), "duplicate": states.count("duplicate")},
        "generations": sum(t.generations for t in result.trials)
        + sum(r.generations for r in final.values())
        + (baseline_test.generations if baseline_test else 0),
        "cache": {"hits": cache.get("hits", 0), "misses": cache.get("misses", 0)},
        "model_loads": model_loads,  # per engine; above 1 where Ray restarted a dead engine
        "search_engines": engines,
        "wall_seconds": round(wall, 1),
        "predictions": paths,
    }
    plots = write_plots(result, run_dir)
    write_report(run_dir, result, summary, plots)
    write_json(run_dir / "summary.json", summary)
    return summary
