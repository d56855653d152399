"""Batch inference over a table (``promptsearch generate``): turn rows into requests, and
generations back into rows."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptsearch.pipelines.data.rows import output_row
from promptsearch.pipelines.engine.actor import Generation
from promptsearch.pipelines.engine.pool import Request
from promptsearch.pipelines.engine.sampling import Sampling
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.prompting.render import render_template, template_fields

if TYPE_CHECKING:
    from promptsearch.search.runtime import EngineOptions


@dataclass(frozen=True)
class GenerateResult:
    """What ``generate_file`` did."""

    rows: int
    output_tokens: int
    seconds: float
    """Generation time, engine start excluded."""
    errors: int
    """Rows whose generation failed (their ``error`` column says why)."""
    parquet: Path
    jsonl: Path


def generate_file(input_path: Path, *, engine: EngineOptions, sampling: Sampling,
                  out: Path | None = None, prompt_column: str | None = None,
                  template: str | None = None, template_file: Path | None = None,
                  messages_column: str | None = None, chat: bool = False,
                  overwrite: bool = False, verbose: bool = False) -> GenerateResult:
    """Generate for every row of a JSONL, Parquet or CSV file and write ``STEM.parquet`` and
    ``STEM.jsonl`` (``out``, default: the input's stem + ``.generated``): the input columns,
    the output, token counts, finish reason, time and error.

    The prompt is a column (``prompt_column``, default ``prompt``), a Jinja ``template`` (or
    ``template_file``) over the columns, or a column of chat messages. Every check is made
    before any engine starts; finished generations go to the generation cache as they come.
    """
    from promptsearch.pipelines.data.readers import read_records, read_utf8
    from promptsearch.pipelines.data.writers import (
        input_files,
        output_errors,
        refuse_overwrite,
        table_paths,
        write_table,
    )
    from promptsearch.search.progress import ProgressLine
    from promptsearch.search.runtime import engine_pool

    if template_file is not None:
        template = read_utf8(template_file)
    records = read_records(input_path)
    stem = out or input_path.with_name(f"{input_path.stem}.generated")
    refuse_overwrite(table_paths(stem), inputs=input_files(input_path, template_file),
                     option="--out", overwrite=overwrite)
    if prompt_column is None and template is None and messages_column is None:
        prompt_column = "prompt"
    requests = build_requests(records, source=str(input_path), prompt_column=prompt_column,
                              template=template, messages_column=messages_column, chat=chat)
    with engine_pool(**dataclasses.asdict(engine), verbose=verbose, cache=True) as pool:
        start = time.perf_counter()
        gens = pool.generate(requests, sampling, progress=ProgressLine("generate", len(requests)))
        elapsed = time.perf_counter() - start
    with output_errors(stem.parent, cached=sampling.reproducible):
        parquet, jsonl = write_table(stem, output_rows(records, gens))
    return GenerateResult(rows=len(gens), output_tokens=sum(g.output_tokens for g in gens),
                          seconds=elapsed, errors=sum(not g.ok for g in gens),
                          parquet=parquet, jsonl=jsonl)


def build_requests(
    records: Sequence[dict[str, Any]],
    *,
    source: str,
    prompt_column: str | None = None,
    template: str | None = None,
    messages_column: str | None = None,
    chat: bool = False,
) -> list[Request]:
    """One request per row: a column as is, a Jinja template over the columns, or messages.

    With ``chat``, a plain prompt becomes a single user message (the model's chat template
    is then applied by the pool).
    """
    given = [x for x in (prompt_column, template, messages_column) if x is not None]
    if len(given) != 1:
        raise UserError("give exactly one of --prompt-column, --template or --messages-column")
    columns = sorted({k for row in records for k in row})
    if template is not None:
        missing = template_fields(template, name="--template") - set(columns)
        if missing:
            raise UserError(f"--template uses unknown field {sorted(missing)[0]!r}; "
                            f"the columns of {source} are: {', '.join(columns)}")
    column = prompt_column or messages_column
    if column is not None and column not in columns:
        raise UserError(f"{source}: no column {column!r}; the columns are: {', '.join(columns)}")
    requests: list[Request] = []
    for n, row in enumerate(records, start=1):
        if template is not None:
            request: Request = render_template(template, row, name="--template")
        else:
            request = row.get(column)  # type: ignore[arg-type]
        if messages_column is not None:
            if not (isinstance(request, list) and all(
                    isinstance(m, dict) and "role" in m and "content" in m for m in request)):
                raise UserError(f"{source} row {n}: {column!r} must be a list of "
                                "{role, content} messages")
        elif not isinstance(request, str):
            raise UserError(f"{source} row {n}: {column!r} must be text, "
                            f"got {type(request).__name__}")
        elif chat:
            request = [{"role": "user", "content": request}]
        requests.append(request)
    return requests


def output_rows(records: Sequence[dict[str, Any]],
                gens: Sequence[Generation]) -> list[dict[str, Any]]:
    """The input columns followed by the generation's columns, row by row."""
    return [output_row(row, gen) for row, gen in zip(records, gens, strict=True)]
