"""A task's examples and splits: bundled data, a directory of splits, or one file split here.

Split rule for a single file (documented, seeded): groups of rows (JSQuAD: one article; else
the task's ``split_group`` field, e.g. QA's context; otherwise each row) are ordered by
sha256(seed, group) and assigned to few-shot / validation / test at 20 / 40 / 40 % of rows, so
a few-shot demo never shares a context with an evaluated question. See
``datasets.split_records``. What differs between tasks (their own file formats, fields that
are not text) is in each task's module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptsearch.pipelines.data.datasets import (
    load_hf_dataset,
    load_table,
    map_fields,
    split_records,
)
from promptsearch.pipelines.data.readers import SUFFIXES
from promptsearch.pipelines.errors import UserError
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
    places: list[str] | None = None
    if not path.exists() and looks_like_hub_id:
        rows = map_fields(load_hf_dataset(text, split="validation"), field_map, source=text)
    elif (own := task.read_file(path, field_map)) is not None:
        rows = own
    elif path.suffix == ".json":
        raise UserError(f"{path}: task {task.name} does not read .json files (SQuAD/JSQuAD "
                        f"JSON is a QA format); it reads {', '.join(SUFFIXES)}")
    else:
        required = [task.id_field, *task.input_fields]
        if references:
            required += list(task.reference_fields)
        located = load_table(path, required=required, field_map=field_map)
        places = [where for where, _ in located]
        rows = [row for _, row in located]
    if not rows:
        raise UserError(f"{path}: no examples; add at least one row")
    return _check_rows(task, rows, source=str(path), places=places, references=references)


def checked_example(task: Task, row: Mapping[str, Any], *, where: str,
                    references: bool = True) -> dict[str, Any]:
    """``row`` with the task's fields checked and its non-text fields decoded by the task's
    module (every CSV cell is text: QA ``answers``, M-IFEval ``instruction_id_list`` /
    ``kwargs``, a choice ``label``). ``where`` names the row in any error.
    """
    task.check_example(row, where=where, references=references)
    example = dict(row)
    decoded = task.decode(example, where)
    texts = [*task.input_fields, *(task.reference_fields if references else ())]
    for name in texts:  # a number or a list in a text field is a mapping mistake
        if name not in decoded and not isinstance(example[name], str):
            raise UserError(f"{where}: field {name!r} must be text, got "
                            f"{type(example[name]).__name__} {str(example[name])[:40]!r}")
    return example


def _check_rows(task: Task, rows: Sequence[Mapping[str, Any]], *, source: str,
                places: Sequence[str] | None, references: bool) -> list[dict[str, Any]]:
    """``places`` says where each row is in ``source`` (``"line 3"``); else its row number."""
    seen: set[str] = set()
    checked = []
    for n, row in enumerate(rows, start=1):
        where = f"{source} {places[n - 1] if places else f'row {n}'}"
        if row.get(task.id_field) not in (None, ""):
            where += f" ({task.id_field} {row[task.id_field]})"
        checked.append(checked_example(task, row, where=where, references=references))
        rid = task.example_id(row)
        if rid in seen:
            raise UserError(f"{where}: duplicate id {rid!r}; ids must be unique")
        seen.add(rid)
    return checked


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
        group = "title" if "title" in rows[0] else task.split_group
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
