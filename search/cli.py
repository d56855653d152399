"""The ``promptsearch`` command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.tasks import TASK_NAMES
from promptsearch.search.runtime import EngineOptions, engine_options

if TYPE_CHECKING:
    from promptsearch.pipelines.metrics.stats import Interval, WinTieLoss
    from promptsearch.search.compare import JudgedPairs, SheetKey, Side
    from promptsearch.search.spec import RunSpec

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
    from promptsearch.pipelines.engine.models import DEFAULT_MODEL, EMBEDDED_MODELS, prepare_model

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
@click.option("--overwrite", is_flag=True,
              help="Replace existing output files (never an input file).")
@engine_options
@click.pass_context
def generate(ctx: click.Context, input_path: Path, out: Path | None, prompt_column: str | None,
             template: str | None, template_file: Path | None, messages_column: str | None,
             chat: bool, max_tokens: int, temperature: float, top_p: float,
             repetition_penalty: float, stop: tuple[str, ...], seed: int | None,
             overwrite: bool, **engine: Any) -> None:
    """Batch inference over a JSONL, Parquet or CSV file.

    Finished generations go to the generation cache as they come (greedy, or sampled with
    --seed), so after a Ctrl-C or a failure the same command continues where it stopped.
    """
    from promptsearch.pipelines.batch import generate_file
    from promptsearch.pipelines.engine.sampling import Sampling, decode_stop

    sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                        repetition_penalty=repetition_penalty, seed=seed,
                        stop=tuple(decode_stop(s) for s in stop))
    result = generate_file(input_path, engine=EngineOptions(**engine), sampling=sampling,
                           out=out, prompt_column=prompt_column, template=template,
                           template_file=template_file, messages_column=messages_column,
                           chat=chat, overwrite=overwrite, verbose=ctx.obj["verbose"])
    tokens, elapsed = result.output_tokens, result.seconds
    click.echo(f"{result.rows} rows, {tokens} output tokens in {elapsed:.1f}s "
               f"({tokens / max(elapsed, 1e-9):.1f} tok/s), {result.errors} errors -> "
               f"{result.parquet}, {result.jsonl}")
    if result.errors == result.rows:
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


def judge_options(func: Any) -> Any:
    """``--judge`` / ``--judge-url`` / ``--judge-model``: who grades a judged task's answers."""
    options = [
        click.option("--judge", help="Judge model promptsearch runs (embedded name, local "
                                     "directory or hub id); the run's own engines when it is "
                                     "--model. For task open."),
        click.option("--judge-url", help="OpenAI-compatible judge server's base URL, e.g. "
                                         "http://localhost:8000/v1 (key from "
                                         "$PROMPTSEARCH_JUDGE_API_KEY)."),
        click.option("--judge-model", help="The judge model's name on --judge-url's server."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


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

    from promptsearch.pipelines.score_job import score_file

    metrics = score_file(task_name, predictions=predictions, references=references,
                         per_row=per_row, field_map=_field_map(fields))
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
              help="Output directory [default: runs/eval-TASK-TIMESTAMP]; never a run's.")
@click.option("--overwrite", is_flag=True,
              help="Replace the predictions and metrics.json of an earlier eval in --out.")
@field_option
@engine_options
@judge_options
@click.pass_context
def eval_(ctx: click.Context, task_name: str, config_path: Path | None, split: str,
          data: str | None, max_examples: int | None, seed: int, out: Path | None,
          overwrite: bool, fields: tuple[str, ...], judge: str | None, judge_url: str | None,
          judge_model: str | None, **engine: Any) -> None:
    """Render, generate, parse and score one configuration on a split.

    Finished generations go to the generation cache as they come, so after a Ctrl-C or a
    failure the same command continues where it stopped.
    """
    import json

    from promptsearch.pipelines.eval_job import evaluate_split

    result = evaluate_split(task_name, engine=EngineOptions(**engine), config_path=config_path,
                            split=split, data=data, max_examples=max_examples, seed=seed,
                            out=out, overwrite=overwrite, field_map=_field_map(fields),
                            judge=judge, judge_url=judge_url, judge_model=judge_model,
                            verbose=ctx.obj["verbose"])
    click.echo(f"predictions: {result.parquet}, {result.jsonl}", err=True)
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
@click.option("--metric", metavar="NAME",
              help="The task metric the search maximises [default: the task's primary; "
                   "'promptsearch tasks' lists them]. On instruct, inst_level_loose_acc is the "
                   "signal a small model can climb.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Run directory [default: runs/TASK-TIMESTAMP].")
@click.option("--force", is_flag=True,
              help="Use --out even if it holds something: the files a previous run wrote "
                   "there are deleted, any other file is kept.")
@click.option("--resume", type=click.Path(path_type=Path),
              help="Finish an interrupted run: replays it from run.yaml and the cache.")
@judge_options
@engine_options
@click.pass_context
def run(ctx: click.Context, task_name: str | None, data: str | None, space: Path | None,
        trials: int, time_budget: float | None, seed: int, chunks: int, scheduler: str,
        concurrency: int | None, trial_retries: int, max_validation: int | None,
        max_test: int | None, metric: str | None, out: Path | None, force: bool,
        resume: Path | None, judge: str | None, judge_url: str | None,
        judge_model: str | None, **engine: Any) -> None:
    """Search prompt configurations on validation, then run the best one on test."""
    from promptsearch.pipelines.data.writers import input_files
    from promptsearch.search.run import RunSpec, execute_run, plan_run, prepare_run_dir

    if resume is not None:
        run_dir = resume
        plan = plan_run(_resumed_spec(ctx, resume, engine["engines"]), resume)
    else:
        if task_name is None:
            raise UserError(f"--task is required ({', '.join(TASK_NAMES)}), or --resume RUN_DIR")
        spec = RunSpec(task=task_name, data=data, space=str(space) if space else None,
                       trials=trials, seed=seed, chunks=chunks, scheduler=scheduler,
                       concurrency=concurrency, trial_retries=trial_retries,
                       time_budget_s=time_budget,
                       max_validation=max_validation, max_test=max_test, metric=metric,
                       judge=judge, judge_url=judge_url, judge_model=judge_model, **engine)
        plan = plan_run(spec)
        run_dir = prepare_run_dir(out, task_name, force=force, inputs=input_files(data, space))
    click.echo(f"run directory: {run_dir}", err=True)
    try:
        summary = execute_run(plan, run_dir, verbose=ctx.obj["verbose"])
    except KeyboardInterrupt:
        click.echo(f"interrupted: nothing finished is lost; continue with "
                   f"'promptsearch run --resume {run_dir}'", err=True)
        sys.exit(130)
    _echo_run_summary(summary, run_dir)


def _echo_run_summary(summary: dict[str, Any], run_dir: Path) -> None:
    """A finished run's last lines: scores, cost, the judge, where the outputs are, and how
    sure best - baseline is."""
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
    if summary.get("judge"):
        from promptsearch.pipelines.judge.report import judge_line

        click.echo(judge_line(summary["judge"]))
    click.echo(f"test predictions: {', '.join(summary['predictions']['test'])}")
    click.echo(f"report: {run_dir / 'report.md'}")
    _echo_how_sure(summary)


def _echo_how_sure(summary: dict[str, Any]) -> None:
    """best - baseline with its interval per split; when validation cannot separate them,
    the run's last line says so and how many validation rows would."""
    from promptsearch.search.report import not_separated_line

    intervals = summary.get("best_minus_baseline") or {}
    parts = [f"{split} {i['difference']:+.2f} [{i['low']:+.2f}, {i['high']:+.2f}] "
             f"({i['rows']} rows)" for split, i in intervals.items() if i]
    if parts:
        confidence = next(i for i in intervals.values() if i)["confidence"]
        click.echo(f"best - baseline {summary['metric']}, {confidence:.0%} paired bootstrap "
                   f"interval: {'; '.join(parts)}")
    validation = intervals.get("validation")
    if validation and not validation["separated"]:
        click.echo(not_separated_line(validation))


RESUME_HONOURS = ("resume", "engines")
"""The ``run`` options a resume uses; the others would change the run it replays."""


def _resumed_spec(ctx: click.Context, resume: Path, engines: int | None) -> RunSpec:
    """``run.yaml`` of the run to resume, with ``--engines`` if given."""
    from promptsearch.search.spec import RunSpec

    if not resume.is_dir():
        raise UserError(f"--resume {resume}: no such directory")
    spec = RunSpec.load(resume)
    _refuse_flags_with_resume(ctx, resume)
    if engines is not None and ctx.get_parameter_source("engines") in (
            ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
        spec = spec.replace(engines=engines)
    return spec


def _refuse_flags_with_resume(ctx: click.Context, resume: Path) -> None:
    """A resume replays ``run.yaml``: an option given with it that it would ignore is an
    error, not a silent surprise."""
    for param in ctx.command.params:
        if param.name in RESUME_HONOURS or \
                ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        flag = max(param.opts, key=len)
        raise UserError(f"{flag} cannot be given with --resume: a resume finishes the run "
                        f"exactly as {resume / 'run.yaml'} describes it; drop {flag}, or start "
                        f"a new run (without --resume) to change it (only "
                        f"{', '.join('--' + n for n in RESUME_HONOURS[1:])} may change)")


@main.command()
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path), metavar="[RUN_A [RUN_B]]")
@click.option("--split", type=click.Choice(["validation", "test"]), default="test",
              show_default=True)
@click.option("--seed", type=int,
              help="Seeds the sheet's side shuffle and the bootstrap [default: RUN's own seed "
                   "for one run, so its summary.json's interval is reproduced; else 0].")
@click.option("--sheet", type=click.Path(path_type=Path),
              help="Write a blind sheet for people here: sheet.html, sheet.csv, key.json.")
@click.option("--ratings", type=click.Path(path_type=Path),
              help="A filled sheet (CSV) to read back; needs --key.")
@click.option("--key", "key_path", type=click.Path(path_type=Path),
              help="The key.json written with the sheet (with --ratings).")
@judge_options
@click.pass_context
def compare(ctx: click.Context, runs: tuple[Path, ...], split: str, seed: int | None,
            sheet: Path | None, ratings: Path | None, key_path: Path | None,
            judge: str | None, judge_url: str | None, judge_model: str | None) -> None:
    """Compare two finished runs' answers (or one run's best against its baseline): the
    metric with its interval, a blind sheet for people, or their filled sheet read back."""
    from promptsearch.search import compare as cmp

    if ratings is not None or key_path is not None:
        if runs or sheet is not None:
            raise UserError("--ratings reads a filled sheet back on its own; give it without "
                            "runs or --sheet")
        if ratings is None or key_path is None:
            raise UserError("--ratings FILLED.csv and --key key.json go together")
        _echo_ratings(ratings, *cmp.ratings_table(ratings, key_path))
        return
    first, second, seed = cmp.load_sides(runs, split, seed=seed)
    _echo_interval(first, second, cmp.compare_metric(first, second, seed=seed), split=split,
                   seed=seed)
    if judge or judge_url:
        _echo_judged(cmp.judge_sides(first, second, judge=judge, url=judge_url,
                                     model=judge_model, seed=seed, verbose=ctx.obj["verbose"]),
                     first, second, split=split)
    if sheet is not None:
        key = cmp.write_sheet(sheet, first, second, split=split, seed=seed)
        click.echo(f"blind sheet: {sheet / 'sheet.html'}, {sheet / 'sheet.csv'} "
                   f"({len(key.shown_as_a)} rows); key: {sheet / 'key.json'} (keep it from the "
                   "raters)")


def _echo_ratings(ratings: Path, key: SheetKey, table: WinTieLoss) -> None:
    click.echo(f"blind ratings of {key.task} {key.split}, {table.rows} rows ({ratings})")
    click.echo(f"first:  {key.first.label()}")
    click.echo(f"second: {key.second.label()}")
    click.echo(table.table("first", "second"))


def _echo_interval(first: Side, second: Side, interval: Interval | None, *, split: str,
                   seed: int) -> None:
    if interval is None:
        click.echo(f"{split}: no references, no {first.metric} to compare")
        return
    names = f"{first.key.label()} - {second.key.label()}"
    verdict = "separated" if interval.separated else "cannot separate them (contains 0)"
    click.echo(f"{names} on {split} {first.metric}: {interval.describe()} over "
               f"{interval.rows} rows (paired bootstrap, seed {seed}): {verdict}")


def _echo_judged(judged: JudgedPairs, first: Side, second: Side, *, split: str) -> None:
    """``compare --judge``: the judge picked the better answer of each row in both orders; a
    side wins only when both orders agree."""
    click.echo(f"judge {judged.judge} ({judged.kind}, prompt v{judged.prompt_version}) on "
               f"{split}, both orders asked, a win only when both agree:")
    click.echo(judged.table.table("first", "second"))
    click.echo(f"first:  {first.key.label()}\nsecond: {second.key.label()}")
    cost = judged.cost
    click.echo(f"unparsable verdicts: {judged.unparsable} of {judged.rows} rows (left out); "
               f"judge cost: {cost.calls} calls ({cost.cached} cached), "
               f"{cost.prompt_tokens + cost.output_tokens} tokens, {cost.seconds:.0f}s")


@main.command(name="serve")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1))
@click.option("--engines", type=click.IntRange(1), envvar="PROMPTSEARCH_ENGINES",
              help="Engine actors (or set PROMPTSEARCH_ENGINES) "
                   "[default: as many as the cluster holds].")
@click.option("--auth-token", envvar="PROMPTSEARCH_AUTH_TOKEN",
              help="Require 'Authorization: Bearer TOKEN' (or set PROMPTSEARCH_AUTH_TOKEN); "
                   "needed unless --host is a loopback address or --no-auth is given.")
@click.option("--no-auth", is_flag=True,
              help="Serve without authentication, even on a host other machines can reach.")
@click.option("--max-ongoing-requests", default=64, show_default=True, type=click.IntRange(1),
              help="Per replica; more wait in a queue.")
@click.option("--max-queued-requests", default=256, show_default=True, type=click.IntRange(1),
              help="Beyond this many waiting, requests get 503.")
@click.option("--retry-after", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Seconds a 503 asks the client to wait (its Retry-After header).")
@click.option("--max-tokens", default=512, show_default=True, type=click.IntRange(1),
              help="Largest max_tokens a request may ask for.")
@click.option("--engine-timeout", default=240.0, show_default=True,
              type=click.FloatRange(min=1), help="Seconds the engines may take to answer one "
                                                 "request; beyond them the answer is 504.")
@click.option("--request-timeout", default=300.0, show_default=True,
              type=click.FloatRange(min=1), help="Seconds Ray Serve gives a whole request, "
                                                 "queueing included; beyond them it answers 408.")
@click.pass_context
def serve_(ctx: click.Context, run_dir: Path, host: str, port: int, replicas: int,
           engines: int | None, auth_token: str | None, no_auth: bool,
           max_ongoing_requests: int, max_queued_requests: int, retry_after: float,
           max_tokens: int, engine_timeout: float, request_timeout: float) -> None:
    """Serve a finished run's best configuration over HTTP with Ray Serve."""
    from promptsearch.serve.run import serve_run

    serve_run(run_dir, host=host, port=port, replicas=replicas, engines=engines,
              auth_token=auth_token, no_auth=no_auth, max_ongoing_requests=max_ongoing_requests,
              max_queued_requests=max_queued_requests, retry_after=retry_after,
              max_tokens=max_tokens, engine_timeout=engine_timeout,
              request_timeout=request_timeout, verbose=ctx.obj["verbose"])
