"""The bad-input battery (issue 6): every bad input, fed through the real CLI, ends with one
clear ``error:`` line naming the file, line or field, exit code 2, no traceback, and nothing
written. All of it is checked before Ray or any engine starts, so each case takes seconds.
The commands run in-process (``run_cli``): an exception escaping one fails the test with its
traceback, and none of these tests may start an engine (they are not marked ``engine``).

Cases already covered elsewhere are not repeated here: `generate` with a missing file, an
unknown column or field, a malformed line, an empty file or an unknown model
(test_cli_generate.py); `score` with missing or extra ids (test_cli_score.py); an unknown
template, a too-large k or an unknown selector in a search space (test_search.py).
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO, run_cli

QA_REFS = REPO / "pipelines/tasks/data/qa/validation.jsonl"
FAST_SECONDS = 60  # an engine alone takes ~40 s to start; these must not get that far


def _jsonl(*rows: dict) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _qa(rid: str, context: str = "富士山は日本一高い山である。", **extra: object) -> dict:
    return {"id": rid, "context": context, "question": "日本一高い山は?", "answers": ["富士山"],
            **extra}


def _yaml(data: object) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def _csv(*rows: dict) -> str:
    """Lists become JSON text cells, as a spreadsheet export holds them."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v
                      for k, v in row.items()} for row in rows)
    return out.getvalue()


def _parquet(*rows: dict) -> bytes:
    out = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(list(rows)), out)
    return out.getvalue().to_pybytes()


LETTERS = "ja:length_constraints:number_letters"


def _instruct(key: int, ids: list[str] | None = None, kwargs: list[dict] | None = None,
              **extra: object) -> dict:
    return {"key": key, "prompt": "300文字以上で書いてください。",
            "instruction_id_list": [LETTERS] if ids is None else ids,
            "kwargs": [{"relation": "以上", "num_letters": 300}] if kwargs is None else kwargs,
            **extra}


SIX_HUNDRED_LETTERS = [{"relation": "以上", "num_letters": "六百"}]
INSTRUCT_PREDICTIONS = _jsonl({"id": 7, "output": "x"}, {"id": 8, "output": "x"})


GOOD_QA = _jsonl(_qa("a"), _qa("b", "琵琶湖は日本最大の湖である。"))
# Far beyond a 2048-token context with any of the task's templates.
LONG_CONTEXT = "今日は晴れで、山の上から遠くの海までよく見えた。" * 400
ONE_TEMPLATE_ZERO_SHOT = _yaml({"templates": ["plain"], "fewshot": {"k": [0]}})
SPLITS_WITH_A_LONG_EXAMPLE = {
    "splits/validation.jsonl": _jsonl(_qa("short-1"), _qa("long-1", LONG_CONTEXT)),
    "splits/test.jsonl": _jsonl(_qa("short-2")),
}
# Would create this file if the template were ever executed.
PWNED = "{{ cycler.__init__.__globals__.os.popen('touch {d}/pwned').read() }}"


def _custom(example: str) -> str:
    return _yaml({"task": "qa", "template": "mine", "custom_template": {"example": example}})


def _space_template(example: str, answer: str = "{{ answers[0] }}") -> str:
    return _yaml({"templates": ["mine"],
                  "extra_templates": {"mine": {"example": example, "answer": answer}}})


RUN_QA = ["run", "--task", "qa"]
EVAL_QA = ["eval", "--task", "qa"]
SCORE_QA = ["score", "--task", "qa"]

# (files written into tmp_path, CLI arguments ({d} is tmp_path), fragments of the error line)
CASES = [
    # -- malformed JSONL: the line number --------------------------------------------------
    pytest.param({"qa.jsonl": GOOD_QA + '{"id": "c", "context": \n'},
                 [*RUN_QA, "--data", "{d}/qa.jsonl"],
                 ["qa.jsonl line 3: not valid JSON", "fix or remove that line"],
                 id="run-malformed-jsonl"),
    pytest.param({"p.jsonl": '{"id": "qa-0024", "output": "x"}\n\n{"id": "qa-0025", output}\n'},
                 [*SCORE_QA, "--predictions", "{d}/p.jsonl", "--references", str(QA_REFS)],
                 ["p.jsonl line 3: not valid JSON"],
                 id="score-malformed-predictions"),
    # -- wrong encoding: say it is not UTF-8, what it looks like, how to convert ----------
    pytest.param({"qa.jsonl": GOOD_QA.encode("shift_jis")},
                 [*EVAL_QA, "--data", "{d}/qa.jsonl"],
                 ["qa.jsonl line 1: not UTF-8 text", "Shift-JIS",
                  "re-save the file as UTF-8, e.g. iconv -f CP932 -t UTF-8"],
                 id="eval-shift-jis"),
    pytest.param({"in.jsonl": _jsonl({"prompt": "こんにちは"}).encode("utf-16")},
                 ["generate", "{d}/in.jsonl"],
                 ["in.jsonl line 1: not UTF-8 text", "UTF-16", "iconv -f UTF-16 -t UTF-8"],
                 id="generate-utf16"),
    pytest.param({"p.jsonl": '{"id": "qa-0024", "output": "x"}\n'.encode("utf-16-le")},
                 [*SCORE_QA, "--predictions", "{d}/p.jsonl", "--references", str(QA_REFS)],
                 ["p.jsonl line 1: not UTF-8 text", "UTF-16LE"],  # ASCII-only, no BOM
                 id="score-utf16-without-bom"),
    # -- missing field -------------------------------------------------------------------
    pytest.param({"qa.jsonl": _jsonl({"id": "a", "context": "c", "answers": ["x"]})},
                 [*EVAL_QA, "--data", "{d}/qa.jsonl"],
                 ["qa.jsonl line 1 (id a): missing required field 'question'",
                  "--field CANONICAL=COLUMN"],
                 id="eval-missing-question"),
    pytest.param({"news.jsonl": _jsonl(*({"id": f"n{i}", "article": "本文", "summary": "要約"}
                                         for i in range(5)))},
                 ["run", "--task", "summary", "--data", "{d}/news.jsonl"],
                 ["news.jsonl line 1 (id n0): missing required field 'text'",
                  "columns are: id, article, summary"],
                 id="run-missing-text"),
    # -- empty dataset -------------------------------------------------------------------
    pytest.param({"qa.jsonl": "\n\n"},
                 [*RUN_QA, "--data", "{d}/qa.jsonl"],
                 ["qa.jsonl: the file has no records"],
                 id="run-empty-file"),
    pytest.param({"splits/validation.jsonl": "", "splits/test.jsonl": GOOD_QA},
                 [*EVAL_QA, "--data", "{d}/splits"],
                 ["splits/validation.jsonl: the file has no records"],
                 id="eval-empty-split-file"),
    pytest.param({"qa.jsonl": _jsonl(_qa("only"))},
                 [*RUN_QA, "--data", "{d}/qa.jsonl"],
                 ["qa.jsonl: the", "split is empty; provide more examples"],
                 id="run-one-row-splits-to-nothing"),
    # -- duplicate ids: both lines ---------------------------------------------------------
    pytest.param({"qa.jsonl": _jsonl(_qa("a"), _qa("b"), _qa("c"), _qa("b"))},
                 [*RUN_QA, "--data", "{d}/qa.jsonl"],
                 ["qa.jsonl: duplicate id b on line 4 (first on line 2)"],
                 id="run-duplicate-id"),
    pytest.param({"p.jsonl": _jsonl({"id": "qa-0024", "output": "x"},
                                    {"id": "qa-0024", "output": "y"})},
                 [*SCORE_QA, "--predictions", "{d}/p.jsonl", "--references", str(QA_REFS)],
                 ["p.jsonl line 2: duplicate id 'qa-0024'"],
                 id="score-duplicate-prediction-id"),
    # -- references missing for score ------------------------------------------------------
    pytest.param({"p.jsonl": _jsonl({"id": "a", "output": "x"}),
                  "refs.jsonl": _jsonl({"id": "a", "context": "c", "question": "q"})},
                 [*SCORE_QA, "--predictions", "{d}/p.jsonl", "--references", "{d}/refs.jsonl"],
                 ["refs.jsonl line 1 (id a): missing required field 'answers'"],
                 id="score-references-without-answers"),
    pytest.param({"p.jsonl": _jsonl({"id": "a", "output": "要約", "text": "本文"})},
                 ["score", "--task", "summary", "--predictions", "{d}/p.jsonl"],
                 ["p.jsonl line 1 (no --references given): missing field 'summary'"],
                 id="score-no-references-anywhere"),
    # -- reference fields: decoded from CSV text, checked row by row before scoring --------
    pytest.param({"p.jsonl": INSTRUCT_PREDICTIONS,
                  "refs.csv": _csv(_instruct(7, kwargs=SIX_HUNDRED_LETTERS), _instruct(8))},
                 ["score", "--task", "instruct", "--predictions", "{d}/p.jsonl",
                  "--references", "{d}/refs.csv"],
                 [f"refs.csv row 1 (key 7): kwargs[0]: {LETTERS}: kwarg 'num_letters' must be "
                  "a non-negative integer, got '六百'"],
                 id="score-instruct-csv-wrong-kwarg-type"),
    pytest.param({"p.jsonl": INSTRUCT_PREDICTIONS,
                  "refs.parquet": _parquet(_instruct(7, ["ja:letters:no_katakana"], [{}]),
                                           _instruct(8, kwargs=SIX_HUNDRED_LETTERS))},
                 ["score", "--task", "instruct", "--predictions", "{d}/p.jsonl",
                  "--references", "{d}/refs.parquet"],
                 [f"refs.parquet row 2 (key 8): kwargs[0]: {LETTERS}: kwarg 'num_letters'"],
                 id="score-instruct-parquet-wrong-kwarg-type"),
    pytest.param({"p.jsonl": INSTRUCT_PREDICTIONS,
                  "refs.csv": _csv(_instruct(7), _instruct(8, ["ja:keywords:nope"], [{}]))},
                 ["score", "--task", "instruct", "--predictions", "{d}/p.jsonl",
                  "--references", "{d}/refs.csv"],
                 ["refs.csv row 2 (key 8): instruction_id_list[0]: unknown instruction id "
                  "'ja:keywords:nope'"],
                 id="score-instruct-unknown-instruction-id"),
    pytest.param({"p.jsonl": INSTRUCT_PREDICTIONS,
                  "refs.jsonl": _jsonl(_instruct(7, [], []), _instruct(8))},
                 ["score", "--task", "instruct", "--predictions", "{d}/p.jsonl",
                  "--references", "{d}/refs.jsonl"],
                 ["refs.jsonl line 1 (key 7): 'instruction_id_list' is empty; give at least one"],
                 id="score-instruct-empty-instruction-list"),
    pytest.param({"p.jsonl": _jsonl({"id": 7, "output": "x",
                                     **_instruct(7, kwargs=SIX_HUNDRED_LETTERS)})},
                 ["score", "--task", "instruct", "--predictions", "{d}/p.jsonl"],
                 ["p.jsonl line 1 (no --references given): kwargs[0]: "
                  f"{LETTERS}: kwarg 'num_letters'"],
                 id="score-instruct-no-references-wrong-kwarg-type"),
    pytest.param({"p.jsonl": _jsonl({"id": "a", "output": "x"}, {"id": "b", "output": "x"}),
                  "refs.jsonl": _jsonl(_qa("a"), _qa("b", answers=[1, 2]))},
                 [*SCORE_QA, "--predictions", "{d}/p.jsonl", "--references", "{d}/refs.jsonl"],
                 ["refs.jsonl line 2 (id b): 'answers' must be a non-empty list of non-empty "
                  "strings", "got [1, 2]"],
                 id="score-qa-answers-not-strings"),
    pytest.param({"p.jsonl": _jsonl({"output": "x", **_qa("a", answers=[1, 2])})},
                 [*SCORE_QA, "--predictions", "{d}/p.jsonl"],
                 ["p.jsonl line 1 (no --references given): 'answers' must be a non-empty list"],
                 id="score-qa-no-references-answers-not-strings"),
    # -- a template reading an unknown field ---------------------------------------------
    pytest.param({"space.yaml": _space_template("{{ contxt }}\n質問: {{ question }}\n回答:")},
                 [*RUN_QA, "--space", "{d}/space.yaml"],
                 ["space.yaml: template 'mine' reads unknown field 'contxt'",
                  "input fields: context, question"],
                 id="run-space-template-unknown-field"),
    pytest.param({"best.yaml": _custom("{{ contxt }}\n質問: {{ question }}\n回答:")},
                 [*EVAL_QA, "--config", "{d}/best.yaml"],
                 ["best.yaml: custom_template: template 'mine' reads unknown field 'contxt'"],
                 id="eval-config-template-unknown-field"),
    # -- Jinja reaching for Python internals: refused before rendering, never executed ----
    pytest.param({"in.jsonl": _jsonl({"prompt": "こんにちは"})},
                 ["generate", "{d}/in.jsonl", "--template", PWNED],
                 ["--template line 1: unsafe template", "'__globals__'"],
                 id="generate-template-globals"),
    pytest.param({"in.jsonl": _jsonl({"prompt": "こんにちは"})},
                 ["generate", "{d}/in.jsonl", "--template", "{{ prompt['__class__'] }}"],
                 ["--template line 1: unsafe template", "'__class__'"],
                 id="generate-template-subscript-dunder"),
    pytest.param({"in.jsonl": _jsonl({"prompt": "こんにちは"})},
                 ["generate", "{d}/in.jsonl", "--template", "{% set x = [] %}{{ x.append(1) }}"],
                 ["--template: unsafe template", "'append'"],  # the sandbox, at render time
                 id="generate-template-mutation"),
    pytest.param({"space.yaml": _space_template("{{ question.__class__.__mro__ }}")},
                 [*RUN_QA, "--space", "{d}/space.yaml"],
                 ["space.yaml: template 'mine' line 1: unsafe template"],
                 id="run-space-template-mro"),
    pytest.param({"space.yaml": _space_template("{{ question }}",
                                                "{{ answers|attr('__class__') }}")},
                 [*RUN_QA, "--space", "{d}/space.yaml"],
                 ["space.yaml: template 'mine' answer line 1: unsafe template", "'__class__'"],
                 id="run-space-answer-attr-filter"),
    pytest.param({"best.yaml": _custom(PWNED)},
                 [*EVAL_QA, "--config", "{d}/best.yaml"],
                 ["best.yaml: custom_template: template 'mine' line 1: unsafe template"],
                 id="eval-config-template-globals"),
    # -- templates that load other templates or fail while rendering -------------------
    pytest.param({"in.jsonl": _jsonl({"prompt": "こんにちは"})},
                 ["generate", "{d}/in.jsonl", "--template", "{% include 'x' %}{{ prompt }}"],
                 ["--template line 1: {% include %} is not supported"],
                 id="generate-template-include"),
    pytest.param({"space.yaml": _space_template("{% extends 'base' %}{{ question }}")},
                 [*RUN_QA, "--space", "{d}/space.yaml"],
                 ["space.yaml: template 'mine' line 1: {% extends %} is not supported"],
                 id="run-space-template-extends"),
    pytest.param({"in.jsonl": _jsonl({"id": "r1", "prompt": "こんにちは"})},
                 ["generate", "{d}/in.jsonl", "--template",
                  "{% for i in range(10**12) %}{% endfor %}{{ prompt }}"],
                 ["--template (example r1): the template failed (OverflowError"],
                 id="generate-template-huge-range"),
    # -- invalid YAML: file, line and column ----------------------------------------------
    pytest.param({"best.yaml": "task: qa\ntemplate: [plain\n"},
                 [*EVAL_QA, "--config", "{d}/best.yaml"],
                 ["best.yaml line 3 column 1: invalid YAML", "fix the file"],
                 id="eval-config-invalid-yaml"),
    pytest.param({"space.yaml": "templates: [plain\nfewshot: {k: 1}\n"},
                 [*RUN_QA, "--space", "{d}/space.yaml"],
                 ["space.yaml line 2 column 8: invalid YAML"],
                 id="run-space-invalid-yaml"),
    pytest.param({"best.yaml": "- task: qa\n- template: plain\n"},
                 [*EVAL_QA, "--config", "{d}/best.yaml"],
                 ["best.yaml: expected a mapping"],
                 id="eval-config-not-a-mapping"),
    # -- unknown task ----------------------------------------------------------------------
    pytest.param({},
                 ["run", "--task", "summarize"],
                 ["Invalid value for '--task': 'summarize' is not one of 'qa', 'summary'"],
                 id="run-unknown-task"),
    pytest.param({"best.yaml": _yaml({"task": "translate", "template": "plain"})},
                 [*EVAL_QA, "--config", "{d}/best.yaml"],
                 ["best.yaml: field 'task': unknown task 'translate'; known tasks: qa"],
                 id="eval-config-unknown-task"),
    # -- unknown model ---------------------------------------------------------------------
    pytest.param({},
                 [*RUN_QA, "--model", "gemma-270m"],
                 ["--model gemma-270m: unknown model", "gemma-3-270m"],
                 id="run-unknown-model"),
    pytest.param({},
                 [*EVAL_QA, "--model", "{d}/no-such-model"],
                 ["no-such-model: unknown model"],
                 id="eval-unknown-model"),
    # -- a prompt longer than the context: run and eval reject it up front ----------------
    pytest.param({**SPLITS_WITH_A_LONG_EXAMPLE, "space.yaml": ONE_TEMPLATE_ZERO_SHOT},
                 [*RUN_QA, "--data", "{d}/splits", "--space", "{d}/space.yaml"],
                 ["splits: example long-1 with template 'plain' needs",
                  "but the context is 2048", "raise --max-model-len"],
                 id="run-prompt-longer-than-context"),
    pytest.param(SPLITS_WITH_A_LONG_EXAMPLE,
                 [*EVAL_QA, "--data", "{d}/splits"],
                 ["splits: example long-1 needs", "but the context is 2048"],
                 id="eval-prompt-longer-than-context"),
    # -- --resume and --out ----------------------------------------------------------------
    pytest.param({},
                 ["run", "--resume", "{d}/runs/qa-1"],
                 ["--resume {d}/runs/qa-1: no such directory"],
                 id="run-resume-missing-directory"),
    pytest.param({"mine/notes.txt": "mine"},
                 ["run", "--resume", "{d}/mine"],
                 ["--resume {d}/mine: no run.yaml there"],
                 id="run-resume-not-a-run"),
    pytest.param({"mine/notes.txt": "mine"},
                 [*RUN_QA, "--out", "{d}/mine"],
                 ["--out {d}/mine: exists and is not a promptsearch run", "--force"],
                 id="run-out-not-a-run"),
    pytest.param({"old/run.yaml": _yaml({"task": "qa"}), "old/notes.txt": "mine"},
                 [*RUN_QA, "--out", "{d}/old"],
                 ["--out {d}/old: already holds a run; use --resume {d}/old"],
                 id="run-out-holds-a-run"),
    pytest.param({"out": "a file"},
                 [*RUN_QA, "--out", "{d}/out"],
                 ["--out {d}/out: exists and is not a directory"],
                 id="run-out-is-a-file"),
]


def _write(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (directories as None, files with their bytes)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _args(args: list[str], d: Path) -> list[str]:
    args = [a.replace("{d}", str(d)) for a in args]
    command = args[0]
    if command in ("run", "eval", "generate") and "--out" not in args:
        args += ["--out", str(d / "out")]
    if command == "score":
        args += ["--per-row", str(d / "out.jsonl")]
    if command in ("run", "eval", "generate") and "--max-model-len" not in args:
        args += ["--max-model-len", "2048"]  # in case a case ever got as far as an engine
    return args


@pytest.mark.parametrize(("files", "args", "fragments"), CASES)
def test_bad_input_is_one_clear_line_and_writes_nothing(
        tmp_path: Path, files: dict[str, str | bytes], args: list[str],
        fragments: list[str]) -> None:
    _write(tmp_path, {name: content.replace("{d}", str(tmp_path))
                      if isinstance(content, str) else content
                      for name, content in files.items()})
    before = _tree(tmp_path)
    start = time.monotonic()
    result = run_cli(*_args(args, tmp_path))
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment.replace("{d}", str(tmp_path)) in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    assert _tree(tmp_path) == before  # no output, no run directory, no stray file
    assert elapsed < FAST_SECONDS, f"took {elapsed:.0f}s: did an engine start?"


@pytest.mark.parametrize("previous", ["not a run", "a run"])
def test_force_proceeds_past_the_out_check(tmp_path: Path, previous: str) -> None:
    """--force gets past the --out check (stopped here by a later check that needs Ray but
    no engine); it deletes a previous run's files there but never files that are not a run's
    (tests/test_data_safety.py checks which)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    if previous == "a run":
        (out / "run.yaml").write_text(_yaml({"task": "qa"}), encoding="utf-8")
        (out / "summary.json").write_text("{}", encoding="utf-8")
    result = run_cli(*RUN_QA, "--out", str(out), "--force", "--engines", "1000",
                     "--max-model-len", "2048", "--max-validation", "2", "--max-test", "2")
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"run directory: {out}" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --engines 1000 needs 1000 CPU cores"), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert yaml.safe_load((out / "run.yaml").read_text())["max_validation"] == 2  # this run's
    assert not (out / "summary.json").exists()
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


@pytest.mark.engine
def test_generate_fails_only_the_row_that_does_not_fit(tmp_path: Path) -> None:
    """`generate`'s rule for a prompt longer than the context: that row gets an error, the
    others are generated, and the exit code is 0 unless every row failed."""
    source = tmp_path / "in.jsonl"
    source.write_text(_jsonl({"id": "short", "prompt": "日本の首都は"},
                             {"id": "long", "prompt": LONG_CONTEXT}), encoding="utf-8")
    result = run_cli("generate", str(source), "--max-tokens", "4", "--max-model-len", "2048",
                     "--out", str(tmp_path / "gen"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "gen.jsonl").read_text().splitlines())}
    assert rows["long"]["finish_reason"] == "error" and rows["long"]["output"] == ""
    assert "the context is 2048" in rows["long"]["error"]
    assert rows["long"]["prompt_tokens"] > 2048
    assert rows["short"]["error"] is None and rows["short"]["finish_reason"] != "error"
    assert rows["short"]["output_tokens"] > 0
    assert "2 rows" in result.stdout and "1 errors" in result.stdout
