"""Batch inference over a table: turn rows into requests, and generations back into rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from promptsearch.pipelines.data.rows import output_row
from promptsearch.pipelines.engine.actor import Generation
from promptsearch.pipelines.engine.pool import Request
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.prompting.render import render_template, template_fields


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
