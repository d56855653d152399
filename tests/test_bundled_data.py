"""Sanity checks for the bundled Japanese demo data of the `qa` and `summary` tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parents[1] / "pipelines/tasks/data"
SPLITS = ("fewshot", "validation", "test")
FIELDS: dict[str, dict[str, type]] = {
    "qa": {"id": str, "context": str, "question": str, "answers": list},
    "summary": {"id": str, "text": str, "summary": str},
}
MIN_COUNTS: dict[str, dict[str, int]] = {
    "qa": {"fewshot": 15, "validation": 40, "test": 40},
    "summary": {"fewshot": 8, "validation": 20, "test": 20},
}
MIN_TOTAL: dict[str, int] = {"qa": 100, "summary": 48}


def load(task: str, split: str) -> list[dict[str, Any]]:
    path = DATA / task / f"{split}.jsonl"
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{path}:{n}: blank line"
        rows.append(json.loads(line))
    return rows


@pytest.mark.parametrize("task", sorted(FIELDS))
def test_schema_ids_and_counts(task: str) -> None:
    fields = FIELDS[task]
    ids: list[str] = []
    for split in SPLITS:
        rows = load(task, split)
        assert len(rows) >= MIN_COUNTS[task][split], (task, split, len(rows))
        for row in rows:
            assert set(row) == set(fields), row
            for key, typ in fields.items():
                assert isinstance(row[key], typ), (row["id"], key)
                if typ is str:
                    assert row[key].strip(), (row["id"], key)
            ids.append(row["id"])
    assert len(ids) >= MIN_TOTAL[task], (task, len(ids))
    assert len(ids) == len(set(ids)), "duplicate ids across splits"


def test_qa_answers_are_extractive_and_passages_do_not_leak() -> None:
    seen: dict[str, str] = {}
    for split in SPLITS:
        for row in load("qa", split):
            answers = row["answers"]
            assert 1 <= len(answers) <= 3, row["id"]
            for answer in answers:
                assert isinstance(answer, str) and answer, row["id"]
                assert answer in row["context"], (row["id"], answer)
            owner = seen.setdefault(row["context"], split)
            assert owner == split, f"{row['id']}: context shared by {owner} and {split}"


def test_summary_is_shorter_than_text() -> None:
    for split in SPLITS:
        for row in load("summary", split):
            assert 0 < len(row["summary"].strip()) < len(row["text"]), row["id"]
