"""Dataset loaders that return rows with canonical field names, and the few-shot/eval split."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from promptsearch.pipelines.data.readers import check_file, read_located_records, read_utf8
from promptsearch.pipelines.errors import UserError, one_line
from promptsearch.pipelines.ifeval import INSTRUCTION_IDS, validate_kwargs

__all__ = [
    "SPLITS",
    "decode_answers",
    "decode_instructions",
    "load_hf_dataset",
    "load_jsquad",
    "load_mifeval",
    "load_table",
    "map_fields",
    "split_records",
]

SPLITS = ("fewshot", "validation", "test")
_SQUAD_LAYOUT = "data[].paragraphs[].{context, qas[].{id, question, answers[].text}}"
_LOCAL_FORMATS = "JSONL/Parquet/CSV/JSQuAD JSON"


def load_jsquad(path: str | Path) -> list[dict]:
    """Questions of a SQuAD 1.1 / JSQuAD JSON file, one row per answerable question.

    Rows: ``id``, ``title``, ``context`` (verbatim; JSQuAD's starts with ``<title> [SEP] ``),
    ``question`` and ``answers`` (unique answer texts in file order). Questions marked
    ``is_impossible`` or without any answer are skipped.
    """
    path = Path(path)
    check_file(path)
    try:
        document = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
            "fix the file"
        ) from None
    rows = []
    for a, article in enumerate(_field(path, document, "data", "", list)):
        where = f"data[{a}]"
        title = _field(path, article, "title", where, str)
        for p, paragraph in enumerate(_field(path, article, "paragraphs", where, list)):
            where_p = f"{where}.paragraphs[{p}]"
            context = _field(path, paragraph, "context", where_p, str)
            for q, qa in enumerate(_field(path, paragraph, "qas", where_p, list)):
                where_q = f"{where_p}.qas[{q}]"
                if not isinstance(qa, dict):
                    _not_squad(path, f"{where_q} is not an object")
                if qa.get("is_impossible"):
                    continue
                texts = [
                    _field(path, answer, "text", f"{where_q}.answers[{n}]", str)
                    for n, answer in enumerate(_field(path, qa, "answers", where_q, list))
                ]
                if not texts:
                    continue
                rows.append(
                    {
                        "id": str(_field(path, qa, "id", where_q, (str, int))),
                        "title": title,
                        "context": context,
                        "question": _field(path, qa, "question", where_q, str),
                        "answers": list(dict.fromkeys(texts)),
                    }
                )
    if not rows:
        raise UserError(f"{path}: no answerable questions found; check that this is the right file")
    _check_unique_ids(path, [(row["id"], f"question id {row['id']}") for row in rows])
    return rows


def _field(path: Path, obj: Any, key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict):
        _not_squad(path, f"{where or 'the top level'} is not an object")
    if key not in obj:
        _not_squad(path, f"{where or 'the top level'} has no {key!r} key")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        name = f"{where}.{key}" if where else key
        _not_squad(path, f"{name} has the wrong type ({type(value).__name__})")
    return value


def _not_squad(path: Path, problem: str) -> None:
    raise UserError(f"{path}: not SQuAD/JSQuAD layout: {problem}; expected {_SQUAD_LAYOUT}")


def load_mifeval(path: str | Path) -> list[dict]:
    """M-IFEval rows (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``) plus ``id``."""
    path = Path(path)
    rows = []
    located = read_located_records(path)
    for where, row in located:
        for name in ("key", "prompt", "instruction_id_list", "kwargs"):
            if row.get(name) is None:
                raise UserError(
                    f"{path} {where}: missing field {name!r}; M-IFEval rows need "
                    "key, prompt, instruction_id_list and kwargs"
                )
        label = f"{path} {where} (key {row['key']})"
        if not isinstance(row["prompt"], str):
            raise UserError(f"{label}: 'prompt' must be a string")
        ids, kwargs = decode_instructions(row, label)
        rows.append({**row, "instruction_id_list": ids, "kwargs": kwargs, "id": str(row["key"])})
    _check_unique_ids(path, [(row["id"], f"key {row['id']}") for row in rows],
                      [where for where, _ in located])
    return rows


def decode_instructions(row: Mapping[str, Any], label: str) -> tuple[list[str], list[dict | None]]:
    """A row's ``instruction_id_list`` and ``kwargs``, checked as M-IFEval rows are.

    Text cells (CSV, or a string column) are JSON-decoded first. ``label`` names the row.
    """
    ids = _json_cell(row.get("instruction_id_list"), label, "instruction_id_list",
                     'a JSON list of instruction ids such as ["ja:letters:kansuuji"]')
    kwargs = _json_cell(row.get("kwargs"), label, "kwargs",
                        'a JSON list with one object per instruction such as [{}]')
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise UserError(f"{label}: 'instruction_id_list' must be a list of strings, "
                        f"got {_short(ids)}")
    if not ids:
        raise UserError(f"{label}: 'instruction_id_list' is empty; give at least one "
                        "instruction id (a prompt without instructions would always pass)")
    if not isinstance(kwargs, list) or not all(isinstance(k, dict | None) for k in kwargs):
        raise UserError(f"{label}: 'kwargs' must be a list of objects, one per instruction, "
                        f"got {_short(kwargs)}")
    if len(ids) != len(kwargs):
        raise UserError(
            f"{label}: 'instruction_id_list' has {len(ids)} entries but 'kwargs' has "
            f"{len(kwargs)}; give one kwargs object per instruction"
        )
    for n, (instruction_id, instruction_kwargs) in enumerate(zip(ids, kwargs, strict=True)):
        try:
            validate_kwargs(instruction_id, instruction_kwargs or {})
        except UserError as exc:
            field = "instruction_id_list" if instruction_id not in INSTRUCTION_IDS else "kwargs"
            raise UserError(f"{label}: {field}[{n}]: {exc}") from None
    return ids, kwargs


def decode_answers(value: Any, label: str) -> list[str]:
    """QA gold answers as a list: a text cell holding a JSON list is decoded, other text is
    one answer (a CSV cell is always text)."""
    if isinstance(value, Mapping) and "text" in value:  # SQuAD on the hub: {"text": [...]}
        value = value["text"]
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            decoded = None
        value = decoded if isinstance(decoded, list) else [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(a, str) and a.strip() for a in value)):
        raise UserError(f"{label}: 'answers' must be a non-empty list of non-empty strings "
                        f'(in CSV: one answer, or a JSON list such as ["東京"]), '
                        f"got {_short(value)}")
    return value


def _json_cell(value: Any, label: str, name: str, expected: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise UserError(f"{label}: {name!r} is text that is not valid JSON ({exc.msg}); "
                        f"write it as {expected}") from None


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def load_table(
    path: str | Path,
    *,
    required: Sequence[str],
    field_map: Mapping[str, str] | None = None,
) -> list[tuple[str, dict]]:
    """Rows of a JSONL/Parquet/CSV file with columns renamed to canonical field names, each
    with where it is in the file (e.g. ``"line 17"``).

    ``field_map`` maps canonical name -> column in the file. Every row must have a non-null
    value for every ``required`` field. If there is an ``id`` field, its values are turned
    into strings and must be present and unique.
    """
    path = Path(path)
    located = read_located_records(path)
    columns = list(dict.fromkeys(key for _, row in located for key in row))
    mapping = dict(field_map or {})
    rows = map_fields([raw for _, raw in located], mapping, source=str(path))
    has_id = any("id" in row for row in rows)
    for (where, _), row in zip(located, rows, strict=True):
        label = where if row.get("id") is None else f"{where} (id {row['id']})"
        for name in [*required, *(["id"] if has_id else [])]:
            if row.get(name) is None:
                column = mapping.get(name, name)
                via = f" (column {column!r} per field_map)" if name in mapping else ""
                raise UserError(
                    f"{path} {label}: missing required field {name!r}{via}; the file's "
                    f"columns are: {', '.join(columns)}. Fill it in, or map the field to a "
                    "column with --field CANONICAL=COLUMN"
                )
        if has_id:
            row["id"] = str(row["id"])
    if has_id:
        _check_unique_ids(path, [(row["id"], f"id {row['id']}") for row in rows],
                          [where for where, _ in located])
    return [(where, row) for (where, _), row in zip(located, rows, strict=True)]


def map_fields(rows: Sequence[Mapping[str, Any]], field_map: Mapping[str, str] | None, *,
               source: str) -> list[dict]:
    """Rows with columns renamed to canonical fields (``field_map``: canonical -> column)."""
    mapping = dict(field_map or {})
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for canonical, column in mapping.items():
        if column not in columns:
            raise UserError(
                f"{source}: field_map maps {canonical!r} to column {column!r}, which the data "
                f"does not have; its columns are: {', '.join(columns)}"
            )
    sources = set(mapping.values())
    mapped = []
    for raw in rows:
        row = {key: value for key, value in raw.items() if key not in sources}
        row.update({canonical: raw.get(column) for canonical, column in mapping.items()})
        mapped.append(row)
    return mapped


def _check_unique_ids(path: Path, ids: list[tuple[str, str]],
                      where: Sequence[str] | None = None) -> None:
    """``ids`` are (value, label) pairs; ``where`` says where each row is (``"line 3"``)."""
    seen: dict[str, int] = {}
    for n, (value, label) in enumerate(ids):
        if value in seen:
            at = f" on {where[n]} (first on {where[seen[value]]})" if where else ""
            raise UserError(f"{path}: duplicate {label}{at}; every row needs a unique id")
        seen[value] = n


def load_hf_dataset(dataset_id: str, *, split: str) -> list[dict]:
    """One split of a Hugging Face hub dataset, via ``datasets.load_dataset``."""
    instead = (
        f"download {dataset_id!r} on a machine with internet access and pass its local file "
        f"path ({_LOCAL_FORMATS}) instead"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        raise UserError(
            f"cannot reach the Hugging Face hub (HF_HUB_OFFLINE is set) to load {dataset_id!r}; "
            + instead
        )
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"cannot reach the Hugging Face hub to load {dataset_id!r}: the 'datasets' package "
            "is not installed; " + instead
        ) from None
    try:
        dataset = datasets.load_dataset(dataset_id, split=split)
    except (ConnectionError, TimeoutError) as exc:
        raise UserError(
            f"cannot reach the Hugging Face hub to load {dataset_id!r} ({one_line(exc)}); "
            + instead
        ) from None
    except Exception as exc:
        if _looks_offline(exc):
            raise UserError(
                f"cannot reach the Hugging Face hub to load {dataset_id!r} ({one_line(exc)}); "
                + instead
            ) from None
        raise UserError(
            f"could not load split {split!r} of Hugging Face dataset {dataset_id!r} "
            f"({one_line(exc)}); check the dataset id and split, or {instead}"
        ) from None
    return [dict(row) for row in dataset]


def _looks_offline(exc: BaseException) -> bool:
    """``datasets`` wraps network failures in assorted types; recognise them by cause chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionError | TimeoutError):
            return True
        name = type(seen).__name__
        if name in {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectTimeout"}:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def split_records(
    records: Sequence[dict],
    *,
    fractions: tuple[float, float, float] = (0.2, 0.4, 0.4),
    seed: int = 0,
    group_by: str | None = None,
) -> dict[str, list[dict]]:
    """Split rows into ``fewshot``, ``validation`` and ``test``, whole groups at a time.

    Rule: rows are grouped by the value of ``group_by`` (without it, each row is its own
    group). Groups are ordered by ``sha256(f"{seed}\\0{key}")`` of their JSON-encoded key
    (first appearance breaks ties). Each group, in that order, goes to the first split
    (fewshot, validation, test) that it fits into without exceeding ``fraction x total
    rows``; a group that fits nowhere goes to the split furthest below its target. Rows
    keep their original order within a split. Splitting JSQuAD with ``group_by="title"``
    keeps every article's questions in one split, so a few-shot example never shares a
    context with an evaluated question.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(
            f"split fractions {tuple(fractions)} must be three non-negative numbers "
            "(fewshot, validation, test) that sum to 1"
        )
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(records):
        if group_by is None:
            key: Any = index
        elif row.get(group_by) is None:
            raise UserError(
                f"record {index + 1} has no {group_by!r} field to group the split by; "
                "fill it in or split without grouping"
            )
        else:
            key = row[group_by]
        encoded = json.dumps(key, ensure_ascii=False, sort_keys=True, default=str)
        groups.setdefault(encoded, []).append(index)

    def digest(key: str) -> str:
        return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()

    targets = [fraction * len(records) for fraction in fractions]
    sizes = [0, 0, 0]
    assigned: list[int] = [0] * len(records)
    for key in sorted(groups, key=digest):
        members = groups[key]
        fits = [s for s in range(3) if sizes[s] + len(members) <= targets[s] + 1e-9]
        chosen = fits[0] if fits else max(range(3), key=lambda s: targets[s] - sizes[s])
        sizes[chosen] += len(members)
        for index in members:
            assigned[index] = chosen
    return {
        name: [row for row, s in zip(records, assigned, strict=True) if s == number]
        for number, name in enumerate(SPLITS)
    }
