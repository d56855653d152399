"""``promptsearch eval``: one prompt configuration on one split of a task's data, its
predictions and ``metrics.json`` written to a directory of their own."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptsearch.pipelines.errors import UserError

if TYPE_CHECKING:
    from promptsearch.pipelines.prompting.config import PromptConfig
    from promptsearch.pipelines.tasks import Task
    from promptsearch.search.runtime import EngineOptions


@dataclass(frozen=True)
class EvalOutput:
    """What ``evaluate_split`` wrote."""

    metrics: dict[str, float]
    """Split-level metrics (empty when the examples carry no references)."""
    parquet: Path
    jsonl: Path
    metrics_json: Path


def evaluate_split(task_name: str, *, engine: EngineOptions, config_path: Path | None = None,
                   split: str = "validation", data: str | None = None,
                   max_examples: int | None = None, seed: int = 0, out: Path | None = None,
                   overwrite: bool = False, field_map: Mapping[str, str] | None = None,
                   judge: str | None = None, judge_url: str | None = None,
                   judge_model: str | None = None, verbose: bool = False) -> EvalOutput:
    """Render, generate, parse and score ``config_path`` (default: the task's baseline) on
    ``split``; write ``predictions/<split>.{parquet,jsonl}`` and then ``metrics.json`` into
    ``out`` (default ``runs/eval-TASK-TIMESTAMP``), which may not be a run's directory.

    Every input, the outputs' paths and every prompt's length are checked before any engine
    starts; finished generations go to the generation cache as they come.
    """
    from promptsearch.pipelines.data.taskdata import load_task_data
    from promptsearch.pipelines.data.writers import (
        output_errors,
        table_paths,
        write_json,
        write_table,
    )
    from promptsearch.pipelines.evaluate import evaluate
    from promptsearch.pipelines.judge.setup import check_judge_options, open_judge
    from promptsearch.pipelines.prompting.config import PromptConfig
    from promptsearch.pipelines.prompting.prompts import demo_pool
    from promptsearch.pipelines.tasks import load_task
    from promptsearch.search.progress import ProgressLine
    from promptsearch.search.runtime import engine_pool, load_tokenizer

    task = load_task(task_name)
    check_judge_options(task, judge, judge_url, judge_model)
    config = PromptConfig.load(config_path) if config_path else PromptConfig.baseline(task)
    if config.task != task.name:
        raise UserError(f"{config_path}: config is for task {config.task!r}, not {task.name!r}")
    data_splits = load_task_data(task, data, seed=seed, field_map=field_map,
                                 max_validation=max_examples, max_test=max_examples)
    examples = data_splits.split(split)
    where = str(config_path or "baseline")
    config.check(task, where=where, pool_size=len(demo_pool(task, data_splits.fewshot)))
    out = out or Path("runs") / f"eval-{task.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem = out / "predictions" / split
    _check_out(out, [*table_paths(stem), out / "metrics.json"], inputs=(data, config_path),
               overwrite=overwrite)
    tokenizer = load_tokenizer(engine.model)
    config.check(task, where=where, has_chat_template=tokenizer.chat_template is not None)
    check_config_fits(task, config, examples, data_splits.fewshot, tokenizer=tokenizer,
                      max_model_len=engine.max_model_len, where=data_splits.source)
    with engine_pool(**dataclasses.asdict(engine), verbose=verbose, cache=True) as pool, \
            open_judge(judge=judge, url=judge_url, model=judge_model, run_pool=pool,
                       max_model_len=engine.max_model_len) as grader:
        result = evaluate(task, config, examples, pool=pool, fewshot=data_splits.fewshot,
                          progress=ProgressLine(f"eval {split}", len(examples)), judge=grader)
    with output_errors(out, cached=config.sampling.reproducible):
        parquet, jsonl = write_table(stem, result.rows)
    summary = {"task": task.name, "split": split, "model": engine.model,
               "examples": len(examples), "metrics": result.metrics,
               "output_tokens": result.output_tokens, "seconds": round(result.seconds, 2),
               "config": config.to_dict()}
    with output_errors(out, cached=config.sampling.reproducible):
        write_json(out / "metrics.json", summary)
    return EvalOutput(metrics=result.metrics, parquet=parquet, jsonl=jsonl,
                      metrics_json=out / "metrics.json")


def _check_out(out: Path, outputs: list[Path], *, inputs: tuple[str | Path | None, ...],
               overwrite: bool) -> None:
    """``--out`` is a directory of its own, never a run's, and replaces nothing unasked."""
    from promptsearch.pipelines.data.writers import input_files, refuse_overwrite

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory; choose another path")
    for marker in ("run.yaml", "summary.json"):
        if (out / marker).exists():
            raise UserError(f"--out {out}: holds a promptsearch run ({marker}); eval would "
                            "replace predictions its summary describes: choose another "
                            "directory")
    refuse_overwrite(outputs, inputs=input_files(*inputs), option="--out",
                     overwrite=overwrite, hint="(an earlier eval's) ")


def check_config_fits(task: Task, config: PromptConfig, examples: list[dict[str, Any]],
                      fewshot: list[dict[str, Any]], *, tokenizer: Any, max_model_len: int,
                      where: str) -> None:
    """Every prompt of one configuration (its own demos per example) must fit the context
    with room for ``max_tokens``: ``eval``'s check, made before any engine starts."""
    from promptsearch.pipelines.prompting.prompts import render_requests
    from promptsearch.search.runtime import count_tokens

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
