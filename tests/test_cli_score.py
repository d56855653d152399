"""`promptsearch score`: metrics recomputed from prediction files, and bad input (no engine)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from promptsearch.pipelines.data.writers import write_jsonl
from tests.conftest import JSQUAD, REPO, run_cli

DATA = REPO / "pipelines/tasks/data"


def _score(*args: str) -> dict:
    result = run_cli("score", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_qa_gold_answers_score_100_and_wrong_ones_0(tmp_path: Path) -> None:
    refs = DATA / "qa/validation.jsonl"
    rows = [json.loads(line) for line in refs.read_text().splitlines()]
    write_jsonl(tmp_path / "gold.jsonl", [{"id": r["id"], "output": r["answers"][0] + "。"}
                                          for r in rows])
    assert _score("--task", "qa", "--predictions", str(tmp_path / "gold.jsonl"),
                  "--references", str(refs)) == {"exact_match": 100.0, "char_f1": 100.0}
    write_jsonl(tmp_path / "bad.jsonl", [{"id": r["id"], "output": "ん"} for r in rows])
    metrics = _score("--task", "qa", "--predictions", str(tmp_path / "bad.jsonl"),
                     "--references", str(refs))
    assert metrics == {"exact_match": 0.0, "char_f1": 0.0}


def test_jsquad_references_by_question_id(tmp_path: Path) -> None:
    data = json.loads(JSQUAD.read_text())
    paragraph = data["data"][0]["paragraphs"][0]
    qas = paragraph["qas"]
    small = {"version": "v1.3", "data": [{"title": data["data"][0]["title"],
                                          "paragraphs": [{"context": paragraph["context"],
                                                          "qas": qas}]}]}
    (tmp_path / "refs.json").write_text(json.dumps(small, ensure_ascii=False))
    preds = [{"id": q["id"], "output": q["answers"][0]["text"]} for q in qas]
    preds[0]["output"] = ""
    write_jsonl(tmp_path / "p.jsonl", preds)
    metrics = _score("--task", "qa", "--predictions", str(tmp_path / "p.jsonl"),
                     "--references", str(tmp_path / "refs.json"))
    expected = 100.0 * (len(qas) - 1) / len(qas)
    assert metrics["exact_match"] == pytest.approx(expected)


def test_instruct_per_row_verdicts_in_instruction_order(tmp_path: Path) -> None:
    refs = DATA / "instruct/fewshot.jsonl"
    rows = [json.loads(line) for line in refs.read_text().splitlines()]
    write_jsonl(tmp_path / "p.jsonl", [{"id": r["key"], "output": r["response"]} for r in rows])
    metrics = _score("--task", "instruct", "--predictions", str(tmp_path / "p.jsonl"),
                     "--references", str(refs), "--per-row", str(tmp_path / "rows.jsonl"))
    assert metrics["prompt_level_strict_acc"] == 100.0
    assert metrics["inst_level_loose_acc"] == 100.0
    per_row = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [p["id"] for p in per_row] == [str(r["key"]) for r in rows]
    for p, r in zip(per_row, rows, strict=True):
        assert [v["instruction_id"] for v in p["instructions"]] == r["instruction_id_list"]
        assert all(v["strict"] and v["loose"] for v in p["instructions"])


def _write_csv(path: Path, rows: list[dict]) -> Path:
    """Lists become JSON text cells, as a spreadsheet export holds them."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v
                          for k, v in row.items()} for row in rows)
    return path


def test_qa_csv_references_with_json_list_answers(tmp_path: Path) -> None:
    refs = [json.loads(line) for line in (DATA / "qa/validation.jsonl").read_text().splitlines()]
    table = [{k: r[k] for k in ("id", "context", "question", "answers")} for r in refs]
    table[0]["answers"] = table[0]["answers"][0]  # a plain-text cell is one answer
    _write_csv(tmp_path / "refs.csv", table)
    write_jsonl(tmp_path / "p.jsonl", [{"id": r["id"], "output": r["answers"][-1]} for r in refs])
    assert _score("--task", "qa", "--predictions", str(tmp_path / "p.jsonl"),
                  "--references", str(tmp_path / "refs.csv")) == {"exact_match": 100.0,
                                                                  "char_f1": 100.0}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_instruct_table_references_score_like_jsonl(tmp_path: Path, suffix: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in
            (DATA / "instruct/fewshot.jsonl").read_text().splitlines()]
    table = [{k: r[k] for k in ("key", "prompt", "instruction_id_list", "kwargs")} for r in rows]
    refs = tmp_path / f"refs{suffix}"
    if suffix == ".csv":
        _write_csv(refs, table)
    else:  # one struct type for all kwargs: each object gets every name, null if not its own
        pq.write_table(pa.Table.from_pylist(table), refs)
    write_jsonl(tmp_path / "p.jsonl", [{"id": r["key"], "output": r["response"]} for r in rows])
    metrics = _score("--task", "instruct", "--predictions", str(tmp_path / "p.jsonl"),
                     "--references", str(refs))
    assert metrics["prompt_level_strict_acc"] == 100.0


def test_summary_scores_without_references_when_rows_carry_them(tmp_path: Path) -> None:
    rows = [{"id": "a", "output": "市は新しいバスを走らせる。", "summary": "市は新しいバスを走らせる。",
             "text": "本文"},
            {"id": "b", "output": "", "summary": "雨が降る。", "text": "本文"}]
    write_jsonl(tmp_path / "p.jsonl", rows)
    metrics = _score("--task", "summary", "--predictions", str(tmp_path / "p.jsonl"))
    assert metrics == {"rouge1": 50.0, "rouge2": 50.0, "rougeL": 50.0}


@pytest.mark.parametrize(("preds", "message"), [
    ([{"id": "qa-0024", "output": "x"}], "no prediction for id"),
    ([{"id": "zzz", "output": "x"}], "no prediction for id"),
    ([{"output": "x"}], "missing field 'id'"),
])
def test_score_bad_input(tmp_path: Path, preds: list, message: str) -> None:
    write_jsonl(tmp_path / "p.jsonl", preds)
    result = run_cli("score", "--task", "qa", "--predictions", str(tmp_path / "p.jsonl"),
                     "--references", str(DATA / "qa/validation.jsonl"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_score_extra_id_and_missing_references(tmp_path: Path) -> None:
    refs = [json.loads(line) for line in (DATA / "qa/validation.jsonl").read_text().splitlines()]
    write_jsonl(tmp_path / "p.jsonl", [{"id": r["id"], "output": "x"} for r in refs]
                + [{"id": "extra-1", "output": "x"}])
    result = run_cli("score", "--task", "qa", "--predictions", str(tmp_path / "p.jsonl"),
                     "--references", str(DATA / "qa/validation.jsonl"))
    assert result.returncode == 2 and "id 'extra-1' is not in the references" in result.stderr
    result = run_cli("score", "--task", "qa", "--predictions", str(tmp_path / "p.jsonl"))
    assert result.returncode == 2 and "missing field 'context'" in result.stderr
