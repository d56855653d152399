"""Which judge a command uses (``--judge`` / ``--judge-url`` / ``--judge-model``), and a check
that it answers before any search starts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.judge.base import GradeItem, Judge, JudgeError, grade_answers
from promptsearch.pipelines.judge.engine import EngineJudge
from promptsearch.pipelines.judge.http import HttpJudge


def check_judge_options(task: Any, judge: str | None, url: str | None,
                        model: str | None) -> None:
    """The options fit together and fit the task; one line naming the option otherwise."""
    from promptsearch.pipelines.evaluate import is_judged

    if judge and url:
        raise UserError("--judge and --judge-url are alternatives: a model promptsearch runs, "
                        "or an OpenAI-compatible server; pass one")
    if url and not model:
        raise UserError("--judge-url needs --judge-model NAME (the model's name on that server)")
    if model and not url:
        raise UserError("--judge-model names a model on the --judge-url server; for a model "
                        "promptsearch runs itself use --judge NAME|DIR")
    if url and not url.startswith(("http://", "https://")):
        raise UserError(f"--judge-url {url}: expected an http:// or https:// URL such as "
                        "http://localhost:8000/v1")
    if judge:
        from promptsearch.pipelines.engine.models import resolve_model

        try:
            resolve_model(judge)
        except UserError as exc:
            raise UserError(f"--judge {judge}: {exc}") from None
    wants = bool(judge or url)
    if task is not None and is_judged(task) and not wants:
        raise UserError(f"task {task.name} is scored by a judge model: pass --judge NAME|DIR "
                        "(e.g. --judge gemma-3-270m), or --judge-url URL --judge-model NAME")
    if task is not None and wants and not is_judged(task):
        raise UserError(f"task {task.name} is scored without a judge; drop --judge/--judge-url")


@contextlib.contextmanager
def open_judge(*, judge: str | None, url: str | None, model: str | None,
               run_pool: Any = None, max_model_len: int = 4096,
               cache: bool = True) -> Iterator[Judge | None]:
    """The judge for a command: ``run_pool`` itself when ``--judge`` names its model, else
    a one-engine pool of its own in the same Ray cluster (shut down on exit); or the server
    at ``url``. Both read and fill the generation cache when ``cache``."""
    from promptsearch.pipelines.engine.models import cache_dir

    if url:
        yield HttpJudge(url, model or "", cache=cache_dir() / "generations" if cache else None)
        return
    if not judge:
        yield None
        return
    if run_pool is not None and _same_model(run_pool.model_name, judge):
        yield EngineJudge(run_pool)
        return
    import ray

    from promptsearch.search.runtime import engine_pool

    if run_pool is not None and ray.available_resources().get("CPU", 0) < 1 \
            and run_pool.config.device == "cpu":
        raise UserError(f"--judge {judge}: the run's engines hold every CPU core, so the "
                        "judge's engine could not start; lower --engines to leave one core")
    with engine_pool(judge, 1, 1, 1, max_model_len, cache=cache) as pool:
        yield EngineJudge(pool, name=judge)


def _same_model(a: str, b: str) -> bool:
    from promptsearch.pipelines.engine.models import resolve_model

    return a == b or str(resolve_model(a)) == str(resolve_model(b))


def check_judge(judge: Judge, rows: Sequence[Mapping[str, Any]]) -> None:
    """Grade the model answers of a few rows before the search: an unreachable judge, or one
    that gives no parsable grade at all, stops the run here with one line."""
    from promptsearch.pipelines.evaluate import run_sync

    items = [GradeItem(str(r["input"]), str(r["reference"]), str(r.get("eval_aspect") or ""),
                       str(r["reference"])) for r in rows]
    if not items:
        return
    grades, _ = run_sync(grade_answers(judge, items))
    if all(g.value is None for g in grades):
        sample = next((g.error or g.reply for g in grades), "")
        raise JudgeError(f"judge {judge.name} gave no parsable grade for any of {len(items)} "
                         f"model answers checked before the search (its reply: "
                         f"{' '.join(sample.split())[:80]!r}); it must answer '評価: N' with N "
                         "from 1 to 5: use a more capable judge model")
