"""The ``promptsearch`` command line."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.tasks import TASK_NAMES
from promptsearch.search.runtime import engine_options, engine_pool

TASK_CHOICE = click.Choice(TASK_NAMES)


class _Group(click.Group):
    """Bad input ends as one line on stderr and exit code 2, never a traceback."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as exc:
            hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("aborted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Show engine and Ray logs.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Prompt search and batch inference for Japanese LLM tasks on Ray + vLLM."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"verbose": verbose}


@main.command()
@click.option("--prepare", "prepare", multiple=True, metavar="NAME",
              help="Convert this embedded model now (repeatable; 'all' for every one).")
@click.option("--force", is_flag=True, help="Convert again even if prepared.")
def models(prepare: tuple[str, ...], force: bool) -> None:
    """List the embedded models and whether each is prepared."""
    from promptsearch.pipelines.models import DEFAULT_MODEL, EMBEDDED_MODELS, prepare_model

    names = list(EMBEDDED_MODELS) if "all" in prepare else list(prepare)
    for name in names:
        if name not in EMBEDDED_MODELS:
            raise UserError(f"--prepare {name}: unknown embedded model; "
                            f"known: {', '.join(EMBEDDED_MODELS)}")
        if EMBEDDED_MODELS[name].is_prepared() and not force:
            click.echo(f"{name}: already prepared at {EMBEDDED_MODELS[name].path}")
            continue
        click.echo(f"{name}: converting GGUF to safetensors ...")
        click.echo(f"{name}: prepared at {prepare_model(name, force=force)}")
    if names:
        return
    for name, model in EMBEDDED_MODELS.items():
        state = "prepared" if model.is_prepared() else "not prepared"
        default = " (default)" if name == DEFAULT_MODEL else ""
        click.echo(f"{name}{default}\t{state}\t{model.description}; {model.license}\t"
                   f"{model.path}")


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Output path stem: writes STEM.parquet and STEM.jsonl "
                   "[default: INPUT's stem + .generated].")
@click.option("--prompt-column", help="Column holding the prompt text.")
@click.option("--template", help="Jinja template over the columns, e.g. '質問: {{ question }}'.")
@click.option("--template-file", type=click.Path(path_type=Path), help="Template from a file.")
@click.option("--messages-column", help="Column holding chat messages [{role, content}, ...].")
@click.option("--chat", is_flag=True, help="Send each prompt as a user message through the "
                                           "model's chat template.")
@click.option("--max-tokens", default=64, show_default=True, type=int)
@click.option("--temperature", default=0.0, show_default=True, type=float)
@click.option("--top-p", default=1.0, show_default=True, type=float)
@click.option("--repetition-penalty", default=1.0, show_default=True, type=float)
@click.option("--stop", multiple=True,
              help="Stop sequence, any text (repeatable); only the escapes \\n (newline), \\t "
                   "(tab) and \\\\ (backslash) are decoded, other backslashes are kept.")
@click.option("--seed", type=int, help="Sampling seed (per request).")
@engine_options
@click.pass_context
def generate(ctx: click.Context, input_path: Path, out: Path | None, prompt_column: str | None,
             template: str | None, template_file: Path | None, messages_column: str | None,
             chat: bool, max_tokens: int, temperature: float, top_p: float,
             repetition_penalty: float, stop: tuple[str, ...], seed: int | None,
             **engine: Any) -> None:
    """Batch inference over a JSONL, Parquet or CSV file."""
    from promptsearch.pipelines.batch import build_requests, output_rows
    from promptsearch.pipelines.readers import read_records, read_utf8
    from promptsearch.pipelines.sampling import Sampling, decode_stop
    from promptsearch.pipelines.writers import write_table
    from promptsearch.search.progress import ProgressLine

    if template_file is not None:
        template = read_utf8(template_file)
    sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                        repetition_penalty=repetition_penalty, seed=seed,
                        stop=tuple(decode_stop(s) for s in stop))
    records = read_records(input_path)
    if prompt_column is None and template is None and messages_column is None:
        prompt_column = "prompt"
    requests = build_requests(records, source=str(input_path), prompt_column=prompt_column,
                              template=template, messages_column=messages_column, chat=chat)
    stem = out or input_path.with_name(f"{input_path.stem}.generated")
    with engine_pool(verbose=ctx.obj["verbose"], **engine) as pool:
        start = time.perf_counter()
        gens = pool.generate(requests, sampling, progress=ProgressLine("generate", len(requests)))
        elapsed = time.perf_counter() - start
    parquet, jsonl = write_table(stem, output_rows(records, gens))
    tokens = sum(g.output_tokens for g in gens)
    errors = sum(not g.ok for g in gens)
    click.echo(f"{len(gens)} rows, {tokens} output tokens in {elapsed:.1f}s "
               f"({tokens / max(elapsed, 1e-9):.1f} tok/s), {errors} errors -> {parquet}, {jsonl}")
    if errors == len(gens):
        sys.exit(1)


@main.command()
def tasks() -> None:
    """List the tasks, their prompt templates and metrics."""
    from promptsearch.pipelines.tasks import TASK_NAMES, load_task

    for name in TASK_NAMES:
        task = load_task(name)
        click.echo(f"{task.name} (v{task.version}): {task.description}")
        click.echo(f"  fields: {', '.join(task.input_fields)} -> "
                   f"{', '.join(task.reference_fields)}")
        click.echo(f"  metrics: {', '.join(task.metrics)} (primary: {task.primary_metric})")
        for template in task.templates.values():
            kind = "chat" if template.chat else "text"
            click.echo(f"  template {template.ref} [{kind}]: {template.description}")


def _field_map(pairs: tuple[str, ...]) -> dict[str, str] | None:
    mapping = {}
    for pair in pairs:
        canonical, sep, column = pair.partition("=")
        if not sep or not canonical or not column:
            raise UserError(f"--field {pair!r}: use CANONICAL=COLUMN, e.g. --field text=article")
        mapping[canonical] = column
    return mapping or None


field_option = click.option("--field", "fields", multiple=True, metavar="CANONICAL=COLUMN",
                            help="Map a task field to a column of the data file (repeatable).")


@main.command()
@click.option("--task", "task_name", required=True, type=TASK_CHOICE)
@click.option("--predictions", required=True, type=click.Path(path_type=Path),
              help="JSONL or Parquet rows with id and output.")
@click.option("--references", type=click.Path(path_type=Path),
              help="Dataset file with the references (else they must be in the predictions).")
@click.option("--per-row", type=click.Path(path_type=Path), help="Write per-row metrics (JSONL).")
@field_option
def score(task_name: str, predictions: Path, references: Path | None, per_row: Path | None,
          fields: tuple[str, ...]) -> None:
    """Score a file of predictions; prints the metrics as one JSON object."""
    import json

    from promptsearch.pipelines.evaluate import score_rows
    from promptsearch.pipelines.predictions import match_predictions, per_row_records
    from promptsearch.pipelines.tasks import load_task
    from promptsearch.pipelines.writers import write_jsonl

    task = load_task(task_name)
    examples, outputs = match_predictions(task, predictions, references,
                                          field_map=_field_map(fields))
    rows, metrics = score_rows(task, examples, outputs)
    if per_row is not None:
        write_jsonl(per_row, per_row_records(task, examples, rows))
    click.echo(json.dumps(metrics, ensure_ascii=False))


@main.command(name="eval")
@click.option("--task", "task_name", required=True, type=TASK_CHOICE)
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Prompt configuration (best.yaml of a run) [default: the task's baseline].")
@click.option("--split", type=click.Choice(["validation", "test"]), default="validation",
              show_default=True)
@click.option("--data", help="Dataset file or directory of split files [default: bundled].")
@click.option("--max-examples", type=click.IntRange(1), help="Evaluate only the first N.")
@click.option("--seed", default=0, show_default=True, help="Seed of the split rule.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Output directory [default: runs/eval-TASK-TIMESTAMP].")
@field_option
@engine_options
@click.pass_context
def eval_(ctx: click.Context, task_name: str, config_path: Path | None, split: str,
          data: str | None, max_examples: int | None, seed: int, out: Path | None,
          fields: tuple[str, ...], **engine: Any) -> None:
    """Render, generate, parse and score one configuration on a split."""
    import json

    from promptsearch.pipelines.config import PromptConfig
    from promptsearch.pipelines.evaluate import evaluate
    from promptsearch.pipelines.prompts import demo_pool
    from promptsearch.pipelines.taskdata import load_task_data
    from promptsearch.pipelines.tasks import load_task
    from promptsearch.pipelines.writers import write_json, write_table
    from promptsearch.search.progress import ProgressLine
    from promptsearch.search.run import check_config_fits, load_tokenizer

    task = load_task(task_name)
    config = PromptConfig.load(config_path) if config_path else PromptConfig.baseline(task)
    if config.task != task.name:
        raise UserError(f"{config_path}: config is for task {config.task!r}, not {task.name!r}")
    data_splits = load_task_data(task, data, seed=seed, field_map=_field_map(fields),
                                 max_validation=max_examples, max_test=max_examples)
    examples = data_splits.split(split)
    where = str(config_path or "baseline")
    config.check(task, where=where, pool_size=len(demo_pool(task, data_splits.fewshot)))
    out = out or Path("runs") / f"eval-{task.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory; choose another path")
    tokenizer = load_tokenizer(engine["model"])
    config.check(task, where=where, has_chat_template=tokenizer.chat_template is not None)
    check_config_fits(task, config, examples, data_splits.fewshot, tokenizer=tokenizer,
                      max_model_len=engine["max_model_len"], where=data_splits.source)
    with engine_pool(verbose=ctx.obj["verbose"], **engine) as pool:
        result = evaluate(task, config, examples, pool=pool, fewshot=data_splits.fewshot,
                          progress=ProgressLine(f"eval {split}", len(examples)))
    parquet, jsonl = write_table(out / "predictions" / split, result.rows)
    summary = {"task": task.name, "split": split, "model": engine["model"],
               "examples": len(examples), "metrics": result.metrics,
               "output_tokens": result.output_tokens, "seconds": round(result.seconds, 2),
               "config": config.to_dict()}
    write_json(out / "metrics.json", summary)
    click.echo(f"predictions: {parquet}, {jsonl}", err=True)
    click.echo(json.dumps(result.metrics, ensure_ascii=False))


@main.command()
@click.option("--task", "task_name", type=TASK_CHOICE)
@click.option("--data", help="Dataset file or directory of split files [default: bundled].")
@click.option("--space", type=click.Path(path_type=Path),
              help="Search space YAML [default: the task's].")
@click.option("--trials", default=16, show_default=True, type=click.IntRange(1))
@click.option("--time-budget", type=click.FloatRange(min=1), help="Seconds for the search.")
@click.option("--seed", default=0, show_default=True, help="Seeds TPE and the split rule.")
@click.option("--chunks", default=4, show_default=True, type=click.IntRange(1),
              help="Validation chunks (the rungs of early stopping).")
@click.option("--scheduler", default="halving", show_default=True,
              type=click.Choice(["halving", "asha"]),
              help="Early stopping: synchronous successive halving, or ASHA for many "
                   "concurrent trials.")
@click.option("--concurrency", type=click.IntRange(1),
              help="With --scheduler asha: trials at once [default: 1]; above 1 the trial "
                   "sequence depends on timing. Halving runs each bracket's trials together.")
@click.option("--trial-retries", default=1, show_default=True, type=click.IntRange(0),
              help="Retries of a trial that failed (from its last chunk); then it is "
                   "recorded as failed, never scored 0.")
@click.option("--max-validation", type=click.IntRange(1), help="Use the first N validation rows.")
@click.option("--max-test", type=click.IntRange(1), help="Use the first N test rows.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Run directory [default: runs/TASK-TIMESTAMP].")
@click.option("--force", is_flag=True,
              help="Use --out even if it holds something: a previous run there is deleted, "
                   "other files are kept.")
@click.option("--resume", type=click.Path(path_type=Path),
              help="Finish an interrupted run: replays it from run.yaml and the cache.")
@engine_options
@click.pass_context
def run(ctx: click.Context, task_name: str | None, data: str | None, space: Path | None,
        trials: int, time_budget: float | None, seed: int, chunks: int, scheduler: str,
        concurrency: int | None, trial_retries: int, max_validation: int | None,
        max_test: int | None, out: Path | None, force: bool, resume: Path | None,
        **engine: Any) -> None:
    """Search prompt configurations on validation, then run the best one on test."""
    from promptsearch.search.run import RunSpec, execute_run, plan_run, prepare_run_dir

    if resume is not None:
        if not resume.is_dir():
            raise UserError(f"--resume {resume}: no such directory")
        plan = plan_run(RunSpec.load(resume), resume)
        run_dir = resume
    else:
        if task_name is None:
            raise UserError("--task is required (qa, summary or instruct), or --resume RUN_DIR")
        spec = RunSpec(task=task_name, data=data, space=str(space) if space else None,
                       trials=trials, seed=seed, chunks=chunks, scheduler=scheduler,
                       concurrency=concurrency, trial_retries=trial_retries,
                       time_budget_s=time_budget,
                       max_validation=max_validation, max_test=max_test, **engine)
        plan = plan_run(spec)
        run_dir = prepare_run_dir(out, task_name, force=force)
    click.echo(f"run directory: {run_dir}", err=True)
    try:
        summary = execute_run(plan, run_dir, verbose=ctx.obj["verbose"])
    except KeyboardInterrupt:
        click.echo(f"interrupted: nothing finished is lost; continue with "
                   f"'promptsearch run --resume {run_dir}'", err=True)
        sys.exit(130)
    metric = summary["metric"]
    base, best = summary["baseline"], summary["best"]

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    click.echo(f"{summary['task']} {metric}: baseline validation {fmt(base['validation'])} "
               f"test {fmt(base['test'])} | best validation {fmt(best['validation'])} "
               f"test {fmt(best['test'])}")
    click.echo(f"trials: {summary['trials']['run']} ({summary['trials']['pruned']} pruned), "
               f"generations {summary['generations']}, cache hits {summary['cache']['hits']}, "
               f"{summary['wall_seconds']:.0f}s")
    click.echo(f"test predictions: {', '.join(summary['predictions']['test'])}")
    click.echo(f"report: {run_dir / 'report.md'}")


@main.command(name="serve")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1))
@click.option("--engines", type=click.IntRange(1), envvar="PROMPTSEARCH_ENGINES",
              help="Engine actors (or set PROMPTSEARCH_ENGINES) "
                   "[default: as many as the cluster holds].")
@click.option("--auth-token", envvar="PROMPTSEARCH_AUTH_TOKEN",
              help="Require 'Authorization: Bearer TOKEN' (or set PROMPTSEARCH_AUTH_TOKEN).")
@click.option("--max-ongoing-requests", default=64, show_default=True, type=click.IntRange(1),
              help="Per replica; more wait in a queue.")
@click.option("--max-queued-requests", default=256, show_default=True, type=click.IntRange(1),
              help="Beyond this many waiting, requests get 503.")
@click.option("--retry-after", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Seconds a 503 asks the client to wait (its Retry-After header).")
@click.option("--max-tokens", default=512, show_default=True, type=click.IntRange(1),
              help="Largest max_tokens a request may ask for.")
@click.pass_context
def serve_(ctx: click.Context, run_dir: Path, host: str, port: int, replicas: int,
           engines: int | None, auth_token: str | None, max_ongoing_requests: int,
           max_queued_requests: int, retry_after: float, max_tokens: int) -> None:
    """Serve a finished run's best configuration over HTTP with Ray Serve."""
    import signal

    from promptsearch.pipelines.config import PromptConfig
    from promptsearch.pipelines.pool import EnginePool
    from promptsearch.search.run import RunSpec
    from promptsearch.search.runtime import init_ray
    from promptsearch.serve.app import ServeLimits, build_app

    spec = RunSpec.load(run_dir)
    if not (run_dir / "best.yaml").is_file():
        raise UserError(f"{run_dir}: no best.yaml; the run has not finished (use "
                        f"'promptsearch run --resume {run_dir}')")
    PromptConfig.load(run_dir / "best.yaml")
    init_ray(verbose=ctx.obj["verbose"])
    from ray import serve

    pool = EnginePool(spec.model, engines=engines, cpus_per_engine=spec.cpus_per_engine,
                      tensor_parallel_size=spec.tensor_parallel_size,
                      max_model_len=spec.max_model_len)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        serve.start(http_options={"host": host, "port": port})
        limits = ServeLimits(auth_token=auth_token, max_tokens=max_tokens)
        serve.run(build_app(run_dir, pool, limits=limits, replicas=replicas,
                            max_ongoing_requests=max_ongoing_requests,
                            max_queued_requests=max_queued_requests,
                            retry_after_s=retry_after),
                  name="promptsearch", route_prefix="/")
        click.echo(f"serving {spec.task} from {run_dir} at http://{host}:{port} "
                   f"(POST /v1/{spec.task}, /v1/chat/completions; GET /healthz); Ctrl-C stops",
                   err=True)
        while not stop["now"]:
            time.sleep(0.5)
    finally:
        serve.shutdown()
        pool.shutdown()
