"""``promptsearch compare``: two runs (or a run's baseline and best) side by side.

- the task's metric, best - baseline or run A - run B, recomputed from the saved outputs with
  a paired bootstrap interval (``pipelines/metrics/stats.py``);
- a blind sheet for people (``--sheet DIR``): ``sheet.html`` (self-contained) and
  ``sheet.csv`` show each row's input and the two answers as A and B, sides shuffled per row
  by the seed; which system is A on each row is only in ``key.json``, which raters must not
  open;
- the filled sheet read back (``--ratings FILLED.csv --key key.json``): the win/tie/loss table
  with a bootstrap interval of (wins - losses) / n;
- a judge's pick of the better answer per row, asked in both orders (``--judge``).
"""

from __future__ import annotations

import csv
import html
import io
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promptsearch.pipelines.data.writers import write_text
from promptsearch.pipelines.errors import UserError, one_line
from promptsearch.pipelines.metrics.stats import (
    Interval,
    Outcome,
    WinTieLoss,
    metric_difference,
    win_tie_loss,
)

if TYPE_CHECKING:
    from promptsearch.pipelines.judge import JudgeCost

SHEET_FILES = ("sheet.html", "sheet.csv", "key.json")
KEY_FORMAT = "promptsearch-blind-sheet-key/1"
RATINGS = {"a": "A", "b": "B", "tie": "tie"}


class SheetSide(BaseModel):
    """One of the two systems compared on a sheet."""

    model_config = ConfigDict(extra="forbid")

    run: str = Field(description="The run directory the answers come from.")
    answers: Literal["best", "baseline"] = Field(
        description="Which configuration of that run wrote them.")
    predictions: str = Field(description="The predictions file read.")

    def label(self) -> str:
        return f"{self.run} ({self.answers})"


class SheetKey(BaseModel):
    """``key.json``: which system shows as A on each row of a blind sheet. Keep it from the
    raters; ``compare --ratings`` needs it to turn their A/B verdicts into wins and losses."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["promptsearch-blind-sheet-key/1"] = Field(
        description="This file's format and version.")
    note: str = Field(description="For the organiser; a rater must not open this file.")
    task: str = Field(description="The task of both runs.")
    split: str = Field(description="The split whose rows the sheet shows.")
    seed: int = Field(description="Seed of the side shuffle and of the bootstrap.")
    first: SheetSide = Field(description="The first system (wins are counted for it).")
    second: SheetSide = Field(description="The second system.")
    shown_as_a: dict[str, Literal["first", "second"]] = Field(
        description="Row id -> the system shown as answer A on that row, in sheet order.")


class RatingRow(BaseModel):
    """One row of the sheet's CSV: what the rater sees and the verdict they fill in."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The row's example id.")
    input: str = Field("", description="The input both systems answered.")
    answer_A: str = Field("", description="The answer shown as A.")
    answer_B: str = Field("", description="The answer shown as B.")
    rating: str = Field("", description="The rater's verdict: A, B or tie.")
    comment: str = Field("", description="Anything the rater wants to note (not read).")


SHEET_COLUMNS = tuple(RatingRow.model_fields)


@dataclass(frozen=True)
class Side:
    """One system's answers on a split, read from a finished run."""

    key: SheetSide
    task: str
    metric: str
    rows: list[dict[str, Any]]


def load_side(run_dir: Path, answers: Literal["best", "baseline"], split: str) -> Side:
    """A finished run's best (``predictions/SPLIT.jsonl``) or baseline
    (``predictions/baseline/SPLIT.jsonl``) answers."""
    from promptsearch.pipelines.data.readers import read_records

    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"{run_dir}: no summary.json; pass the directory of a finished run "
                        f"(finish it with 'promptsearch run --resume {run_dir}')")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        task, metric = str(summary["task"]), str(summary["metric"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{summary_path}: not a summary.json written by 'promptsearch run' "
                        f"({one_line(exc)})") from None
    folder = run_dir / "predictions" / ("baseline" if answers == "baseline" else "")
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        hint = (" (runs made before baselines were saved have none: compare two runs, or "
                "run 'promptsearch eval --config baseline.yaml' for its answers)"
                if answers == "baseline" else "")
        raise UserError(f"{run_dir}: no {answers} predictions for {split} ({path}){hint}")
    return Side(SheetSide(run=str(run_dir), answers=answers, predictions=str(path)),
                task, metric, read_records(path))


def load_sides(runs: Sequence[Path], split: str, *, seed: int | None) -> tuple[Side, Side, int]:
    """``compare RUN`` (its best against its baseline) or ``compare RUN_A RUN_B`` (their
    best), and the seed: the one given, else RUN's own (so that its ``summary.json`` interval
    is reproduced), else 0."""
    if not 1 <= len(runs) <= 2:
        raise UserError("give RUN (its best against its baseline) or RUN_A RUN_B, or "
                        "--ratings FILLED.csv --key key.json")
    first = load_side(runs[0], "best", split)
    if len(runs) == 2:
        return first, load_side(runs[1], "best", split), 0 if seed is None else seed
    second = load_side(runs[0], "baseline", split)
    if seed is None and (runs[0] / "run.yaml").is_file():
        from promptsearch.search.spec import load_run_spec

        seed = load_run_spec(runs[0]).seed
    return first, second, 0 if seed is None else seed


def pair_rows(first: Side, second: Side) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The two sides' rows matched by id, in the first's order; both must answer the same
    inputs of the same task."""
    if first.task != second.task:
        raise UserError(f"{second.key.run}: task {second.task!r}, but {first.key.run} is "
                        f"{first.task!r}; compare runs of one task")
    from promptsearch.pipelines.tasks import load_task

    task = load_task(first.task)
    by_id = {str(r["id"]): r for r in second.rows}
    ids = [str(r["id"]) for r in first.rows]
    missing = [i for i in ids if i not in by_id]
    extra = sorted(set(by_id) - set(ids))
    if missing or extra:
        what = f"has no row {missing[0]!r}" if missing else f"has a row {extra[0]!r} that "\
            f"{first.key.predictions} lacks"
        raise UserError(f"{second.key.predictions}: {what}; compare runs on the same data "
                        "and split")
    pairs = []
    for row in first.rows:
        other = by_id[str(row["id"])]
        if any(row.get(f) != other.get(f) for f in task.input_fields):
            raise UserError(f"{second.key.predictions}: row {row['id']!r} has another input "
                            f"than in {first.key.predictions}; compare runs on the same data")
        pairs.append((row, other))
    return pairs


def compare_metric(first: Side, second: Side, *, seed: int) -> Interval | None:
    """first - second on the first run's metric, rescored from the saved outputs with the
    task's own scoring; None when the rows carry no references."""
    from promptsearch.pipelines.evaluate import has_references, is_judged, score_rows
    from promptsearch.pipelines.tasks import load_task

    task = load_task(first.task)
    pairs = pair_rows(first, second)
    examples = [a for a, _ in pairs]
    if not has_references(task, examples):
        return None
    if is_judged(task):  # the grades the runs' judge gave (rescoring needs the judge);
        # a row without a grade on either side has no difference to resample
        graded = [p for p in pairs if all(side.get(first.metric) is not None for side in p)]
        if not graded:
            return None
        scored = [[{m: side[i].get(m) for m in task.metrics} for side in graded]
                  for i in (0, 1)]
    else:
        scored = [score_rows(task, examples, [str(side[i]["output"]) for side in pairs])[0]
                  for i in (0, 1)]
    return metric_difference(scored[0], scored[1], metric=first.metric,
                             aggregate=task.aggregate, seed=seed)


@dataclass(frozen=True)
class JudgedPairs:
    """``compare --judge``: the judge's pick of the better answer of each row, both orders
    asked; a side wins a row only when both orders agree."""

    judge: str
    kind: str
    prompt_version: int
    table: WinTieLoss
    """First against second, with the bootstrap interval of (wins - losses) / n."""
    unparsable: int
    """Rows without a parsable verdict (left out of the table)."""
    rows: int
    cost: JudgeCost


def judge_sides(first: Side, second: Side, *, judge: str | None, url: str | None,
                model: str | None, seed: int, verbose: bool = False) -> JudgedPairs:
    """Ask ``judge`` (run here) or the server at ``url`` which side answered each row
    better."""
    from promptsearch.pipelines.evaluate import run_sync
    from promptsearch.pipelines.judge.pairwise import judge_pairs, pair_items, summarize
    from promptsearch.pipelines.judge.setup import check_judge_options, open_judge
    from promptsearch.pipelines.tasks import load_task
    from promptsearch.search.runtime import init_ray

    check_judge_options(None, judge, url, model)
    items = pair_items(load_task(first.task), pair_rows(first, second))
    if judge:
        init_ray(verbose=verbose)
    with open_judge(judge=judge, url=url, model=model) as grader:
        assert grader is not None
        verdicts, cost = run_sync(judge_pairs(grader, items))
        table, unparsable = summarize(verdicts, seed=seed)
        return JudgedPairs(judge=grader.name, kind=grader.kind,
                           prompt_version=grader.describe()["prompt_version"], table=table,
                           unparsable=unparsable, rows=len(verdicts), cost=cost)


def _input_text(task_name: str, row: dict[str, Any]) -> str:
    from promptsearch.pipelines.tasks import load_task

    fields = load_task(task_name).input_fields
    if len(fields) == 1:
        return str(row.get(fields[0], ""))
    return "\n\n".join(f"{f}: {row.get(f, '')}" for f in fields)


def write_sheet(out_dir: Path, first: Side, second: Side, *, split: str,
                seed: int) -> SheetKey:
    """``sheet.html``, ``sheet.csv`` and ``key.json`` in ``out_dir``, which must hold none
    of them (a sheet being rated must never be replaced under its raters)."""
    taken = [name for name in SHEET_FILES if (out_dir / name).exists()]
    if taken:
        raise UserError(f"--sheet {out_dir}: already holds {taken[0]}; a sheet may be out "
                        "for rating, so choose another directory")
    pairs = pair_rows(first, second)
    shuffle = random.Random(seed)
    rows, shown_as_a = [], {}
    for a_row, b_row in pairs:
        first_is_a = shuffle.random() < 0.5
        row_id = str(a_row["id"])
        shown_as_a[row_id] = "first" if first_is_a else "second"
        answers = (str(a_row["output"]), str(b_row["output"]))
        rows.append(RatingRow(id=row_id, input=_input_text(first.task, a_row),
                              answer_A=answers[0 if first_is_a else 1],
                              answer_B=answers[1 if first_is_a else 0]))
    key = SheetKey(format=KEY_FORMAT, note="For the organiser only: raters must not open "
                   "this file. 'promptsearch compare --ratings FILLED.csv --key key.json' "
                   "reads the filled sheet back.", task=first.task, split=split, seed=seed,
                   first=first.key, second=second.key, shown_as_a=shown_as_a)
    write_text(out_dir / "key.json", key.model_dump_json(indent=2) + "\n")
    write_text(out_dir / "sheet.csv", "\ufeff" + _csv_text(rows))  # BOM: Excel reads UTF-8
    write_text(out_dir / "sheet.html", _html_page(rows))
    return key


def _csv_text(rows: Sequence[RatingRow]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SHEET_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row.model_dump())
    return buffer.getvalue()


_STYLE = """
body{font-family:system-ui,'Hiragino Sans','Noto Sans JP',sans-serif;margin:2em;max-width:80em}
.row{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}
.text{white-space:pre-wrap;background:#f6f6f6;padding:.5em;border-radius:4px}
.answers{display:grid;grid-template-columns:1fr 1fr;gap:1em}
label{margin-right:1.5em} button{font-size:1.1em;padding:.4em 1em}
"""

_SCRIPT = """
function cell(v){v=v==null?'':String(v);return /[",\\r\\n]/.test(v)?'"'+v.replace(/"/g,'""')+'"':v}
function download(){
  var cols=['id','input','answer_A','answer_B','rating','comment'],lines=[cols.join(',')],open=0;
  document.querySelectorAll('.row').forEach(function(r){
    var id=r.dataset.id,c=r.querySelector('input[type=radio]:checked');
    if(!c)open++;
    lines.push([id,r.querySelector('.input').textContent,r.querySelector('.a').textContent,
      r.querySelector('.b').textContent,c?c.value:'',r.querySelector('textarea').value]
      .map(cell).join(','));});
  if(open&&!confirm(open+' rows have no rating yet. Download anyway?'))return;
  var blob=new Blob(['\\ufeff'+lines.join('\\r\\n')+'\\r\\n'],{type:'text/csv'});
  var a=document.createElement('a');a.href=URL.createObjectURL(blob);a.download='ratings.csv';
  a.click();}
"""


def _html_page(rows: Sequence[RatingRow]) -> str:
    """The sheet as one page with no external assets: each row's input and answers A and B,
    a choice of A / tie / B and a comment, and a button that downloads the ratings CSV."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="ja"><head><meta charset="utf-8">',
             "<title>Blind comparison / ブラインド比較</title>", f"<style>{_STYLE}</style>",
             f"<script>{_SCRIPT}</script></head><body>",
             "<h1>Blind comparison / ブラインド比較</h1>",
             "<p>For each input, read answers A and B and choose the better one, or tie if "
             "neither is better. Which system wrote which answer changes from row to row and is "
             "not shown. Do not open key.json. When done, press the button below and send the "
             "downloaded ratings.csv (or fill the rating column of sheet.csv with A, B or "
             "tie).</p>",
             "<p>各入力について回答 A と B を読み、良い方を選んでください。優劣がつかなければ "
             "tie を選んでください。どちらのシステムの回答かは行ごとに入れ替わり、表示されません。"
             "key.json は開かないでください。終わったら下のボタンで ratings.csv "
             "をダウンロードして送ってください (sheet.csv の rating 列に A, B, tie "
             "を書き込んでも構いません)。</p>",
             f"<p>{len(rows)} rows / {len(rows)} 件</p>"]
    for n, row in enumerate(rows, 1):
        name = f"r{n}"
        choices = "".join(
            f'<label><input type="radio" name="{name}" value="{v}"> {label}</label>'
            for v, label in (("A", "A is better / A が良い"), ("tie", "tie / 同等"),
                             ("B", "B is better / B が良い")))
        parts += [f'<div class="row" data-id="{esc(row.id)}">',
                  f"<h3>{n}. {esc(row.id)}</h3>",
                  f'<div class="text input">{esc(row.input)}</div>',
                  '<div class="answers">',
                  f'<div><h4>A</h4><div class="text a">{esc(row.answer_A)}</div></div>',
                  f'<div><h4>B</h4><div class="text b">{esc(row.answer_B)}</div></div>',
                  "</div>", f"<p>{choices}</p>",
                  '<textarea rows="2" cols="80" placeholder="comment / コメント"></textarea>',
                  "</div>"]
    parts += ['<p><button onclick="download()">Download ratings.csv / 評価をダウンロード'
              "</button></p>", "</body></html>", ""]
    return "\n".join(parts)


def read_key(path: Path) -> SheetKey:
    from promptsearch.pipelines.data.readers import check_file, read_utf8

    check_file(path)
    try:
        return SheetKey.model_validate_json(read_utf8(path))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "the file"
        raise UserError(f"{path}: {where}: {error['msg']}; pass the key.json that "
                        "'promptsearch compare --sheet' wrote with this sheet") from None


def read_ratings(path: Path, key: SheetKey, *, key_path: Path) -> list[Outcome]:
    """The filled sheet's verdicts as outcomes for the key's first system, one per row in
    sheet order. Every problem is one error naming the file and line."""
    from promptsearch.pipelines.data.readers import check_file, read_utf8

    check_file(path)
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"{path}: empty file; fill in the sheet.csv that 'promptsearch "
                        "compare --sheet' wrote") from None
    unknown = [c for c in header if c not in SHEET_COLUMNS]
    for needed in ("id", "rating"):
        if needed not in header:
            raise UserError(f"{path} line 1: no {needed!r} column; the sheet's columns are "
                            f"{', '.join(SHEET_COLUMNS)}")
    if unknown:
        raise UserError(f"{path} line 1: unknown column {unknown[0]!r}; the sheet's columns "
                        f"are {', '.join(SHEET_COLUMNS)}")
    verdicts: dict[str, tuple[int, str]] = {}
    line = reader.line_num
    for sheet_row, cells in enumerate(reader, 2):
        start, line = line + 1, reader.line_num
        at = f"line {start} (spreadsheet row {sheet_row})"  # cells may span several lines
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise UserError(f"{path} {at}: {len(cells)} cells but the header has "
                            f"{len(header)}; keep the sheet's columns")
        row = dict(zip(header, cells, strict=True))
        row_id = row["id"].strip()
        if row_id not in key.shown_as_a:
            raise UserError(f"{path} {at}: unknown id {row_id!r}: not a row of the "
                            f"sheet that {key_path} belongs to")
        if row_id in verdicts:
            raise UserError(f"{path} {at}: id {row_id!r} is rated twice (also on "
                            f"spreadsheet row {verdicts[row_id][0]}); keep one row per id")
        value = row["rating"].strip()
        if value.casefold() not in RATINGS:
            what = "no rating" if not value else f"unknown rating {value!r}"
            raise UserError(f"{path} {at}: {what} for id {row_id!r}; write A, B or "
                            "tie")
        verdicts[row_id] = (sheet_row, RATINGS[value.casefold()])
    missing = [i for i in key.shown_as_a if i not in verdicts]
    if missing:
        raise UserError(f"{path}: no row for id {missing[0]!r} ({len(missing)} of "
                        f"{len(key.shown_as_a)} rows missing); every row of the sheet needs "
                        "a rating")
    outcomes: list[Outcome] = []
    for row_id, first_side in key.shown_as_a.items():
        verdict = verdicts[row_id][1]
        if verdict == "tie":
            outcomes.append("tie")
        else:
            first_won = (verdict == "A") == (first_side == "first")
            outcomes.append("win" if first_won else "loss")
    return outcomes


def ratings_table(path: Path, key_path: Path) -> tuple[SheetKey, WinTieLoss]:
    """``compare --ratings``: the filled sheet, unblinded with its key, as win/tie/loss."""
    key = read_key(key_path)
    outcomes = read_ratings(path, key, key_path=key_path)
    return key, win_tie_loss(outcomes, seed=key.seed)
