"""A task's examples and splits: bundled data, a directory of splits, or one file split here.

Split rule for a single file (documented, seeded): groups of rows (JSQuAD: one article; other
QA files: one context; otherwise each row) are ordered by sha256(seed, group) and assigned to
few-shot / validation / test at 20 / 40 / 40 % of rows, so a few-shot demo never shares a
context with an evaluated question. See ``datasets.split_records``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptsearch.pipelines.datasets import (
    load_hf_dataset,
    load_jsquad,
    load_mifeval,
    load_table,
    split_records,
)
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.readers import SUFFIXES
from promptsearch.pipelines.tasks import TASK_DIR, Task

SPLITS = ("fewshot", "validation", "test")


@dataclass
class TaskData:
    fewshot: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    source: str

    def split(self, name: str) -> list[dict[str, Any]]:
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, name)


def load_examples(task: Task, source: str | Path, *,
                  field_map: Mapping[str, str] | None = None,
                  references: bool = True) -> list[dict[str, Any]]:
    """Every example of one file in the task's canonical fields, checked row by row."""
    text = str(source)
    path = Path(source)
    looks_like_hub_id = (text.count("/") == 1 and not text.startswith((".", "/"))
                         and path.suffix not in (*SUFFIXES, ".json"))
    if not path.exists() and looks_like_hub_id:
        rows = load_hf_dataset(text, split="validation")
    elif path.suffix == ".json":
        if task.name != "qa":
            raise UserError(f"{path}: SQuAD/JSQuAD JSON is a QA format; task {task.name} "
                            f"reads {', '.join(SUFFIXES)}")
        rows = load_jsquad(path)
    elif task.name == "instruct" and path.suffix == ".jsonl" and not field_map:
        rows = load_mifeval(path)
    else:
        required = [task.id_field, *task.input_fields]
        if references:
            required += list(task.reference_fields)
        rows = load_table(path, required=required, field_map=field_map)
    if not rows:
        raise UserError(f"{path}: no examples; add at least one row")
    _check_rows(task, rows, where=str(path), references=references)
    return rows


def _check_rows(task: Task, rows: Sequence[Mapping[str, Any]], *, where: str,
                references: bool) -> None:
    seen: set[str] = set()
    for n, row in enumerate(rows, start=1):
        task.check_example(row, where=f"{where} row {n}", references=references)
        rid = task.example_id(row)
        if rid in seen:
            raise UserError(f"{where} row {n}: duplicate id {rid!r}; ids must be unique")
        seen.add(rid)
        if task.name == "qa" and not isinstance(row.get("answers", []), list):
            raise UserError(f"{where} row {n}: 'answers' must be a list of strings")


def load_task_data(task: Task, data: str | Path | None = None, *, seed: int = 0,
                   field_map: Mapping[str, str] | None = None,
                   max_validation: int | None = None,
                   max_test: int | None = None) -> TaskData:
    """Bundled data when ``data`` is None; a directory of split files; or one file to split."""
    if data is None:
        splits = _split_dir(task, TASK_DIR / "data" / task.name, field_map)
        source = f"bundled {task.name} data"
    elif Path(data).is_dir():
        splits = _split_dir(task, Path(data), field_map)
        source = str(data)
    else:
        rows = load_examples(task, data, field_map=field_map)
        group = "title" if "title" in rows[0] else ("context" if task.name == "qa" else None)
        splits = split_records(rows, seed=seed, group_by=group)
        source = str(data)
    for name in ("validation", "test"):
        if not splits[name]:
            raise UserError(f"{source}: the {name} split is empty; provide more examples")
    return TaskData(fewshot=splits["fewshot"],
                    validation=splits["validation"][:max_validation],
                    test=splits["test"][:max_test], source=source)


def _split_dir(task: Task, directory: Path,
               field_map: Mapping[str, str] | None) -> dict[str, list[dict[str, Any]]]:
    splits: dict[str, list[dict[str, Any]]] = {}
    for name in SPLITS:
        found = [directory / f"{name}{s}" for s in SUFFIXES if (directory / f"{name}{s}").is_file()]
        if not found:
            if name == "fewshot":
                splits[name] = []
                continue
            raise UserError(f"{directory}: no {name} file ({name}.jsonl, .parquet or .csv)")
        splits[name] = load_examples(task, found[0], field_map=field_map,
                                     references=name != "test")
    return splits
