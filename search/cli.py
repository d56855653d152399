"""The ``promptsearch`` command line."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from promptsearch.pipelines.errors import UserError
from promptsearch.search.runtime import engine_options, engine_pool


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
@click.option("--stop", multiple=True, help="Stop sequence (repeatable); '\\n' means newline.")
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
    from promptsearch.pipelines.sampling import Sampling
    from promptsearch.pipelines.writers import write_table
    from promptsearch.search.progress import ProgressLine

    if template_file is not None:
        template = read_utf8(template_file)
    sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                        repetition_penalty=repetition_penalty, seed=seed,
                        stop=tuple(s.encode().decode("unicode_escape") for s in stop))
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
