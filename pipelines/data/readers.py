"""Read a table of records from JSON Lines, Parquet or CSV, chosen by the file's suffix.

Every bad-input problem becomes a ``UserError`` naming the file (and line) and what to do.
``.json`` is deliberately not accepted here: plain JSON files are SQuAD/JSQuAD datasets
and are read by ``datasets.load_jsquad``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, NoReturn

from promptsearch.pipelines.errors import UserError, one_line

__all__ = ["SUFFIXES", "read_records"]

SUFFIXES = (".jsonl", ".parquet", ".csv")
_JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def read_records(path: str | Path) -> list[dict]:
    """All records of the file as plain Python dicts, in file order."""
    return [row for _, row in read_located_records(path)]


def read_located_records(path: str | Path) -> list[tuple[str, dict]]:
    """Like ``read_records`` but each row comes with where it is, e.g. ``"line 17"``.

    JSONL rows are located by 1-based line number (blank lines are skipped, so row and line
    numbers can differ); Parquet and CSV rows by 1-based data row number (header excluded).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(
            f"{path}: unsupported file type {suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(SUFFIXES)} (SQuAD/JSQuAD .json files are loaded as JSQuAD)"
        )
    check_file(path)
    if suffix == ".jsonl":
        located = _read_jsonl(path)
    elif suffix == ".parquet":
        located = _read_parquet(path)
    else:
        located = _read_csv(path)
    if not located:
        raise UserError(f"{path}: the file has no records; add at least one row")
    return located


def check_file(path: Path) -> None:
    """Raise a ``UserError`` unless ``path`` is an existing regular file."""
    if not path.exists():
        raise UserError(f"{path}: file not found; check the path")
    if not path.is_file():
        raise UserError(f"{path}: not a regular file; pass the path of a data file")


def read_utf8(path: Path) -> str:
    """The file's text; a UTF-8 byte-order mark is ignored. ASCII-only UTF-16 decodes as
    UTF-8 with NUL bytes in between, so it is recognised and refused too."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        _not_utf8(path, data, exc.start)
    guess = _guess_encoding(data) if "\0" in text else None
    if guess is not None and guess[0].startswith("UTF-16"):
        _not_utf8(path, data, data.index(0))
    return text


def _not_utf8(path: Path, data: bytes, offset: int) -> NoReturn:
    line = data.count(b"\n", 0, offset) + 1
    guess = _guess_encoding(data)
    looks, how = "", ""
    if guess is not None:
        looks = f"; it looks like {guess[0]}"
        how = f", e.g. iconv -f {guess[1]} -t UTF-8 {path} > NEW_FILE"
    raise UserError(f"{path} line {line}: not UTF-8 text (byte 0x{data[offset]:02x} at offset "
                    f"{offset}){looks}; re-save the file as UTF-8{how}")


def _guess_encoding(data: bytes) -> tuple[str, str] | None:
    """(what to call it, iconv's name) of non-UTF-8 text, so the error can say how to convert.

    Japanese data that is not UTF-8 is nearly always UTF-16 (Excel's "Unicode text") or
    Shift-JIS (CP932, Windows' default); EUC-JP still turns up in older corpora.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16", "UTF-16"
    head = data[:200]
    if head.count(0) * 4 > len(head):
        return ("UTF-16LE", "UTF-16LE") if head[1::2].count(0) > head[::2].count(0) \
            else ("UTF-16BE", "UTF-16BE")
    for codec, label, iconv_name in (("cp932", "Shift-JIS (CP932)", "CP932"),
                                     ("euc_jp", "EUC-JP", "EUC-JP")):
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        if _JAPANESE.search(text):
            return label, iconv_name
    return None


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    located = []
    # Split on "\n" only: str.splitlines() would also break inside JSON strings at U+2028 etc.
    for number, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                "fix or remove that line"
            ) from None
        if not isinstance(row, dict):
            raise UserError(
                f"{path} line {number}: expected a JSON object {{...}} but found "
                f"{_json_kind(row)}; each line must hold one record object"
            )
        located.append((f"line {number}", row))
    return located


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _read_parquet(path: Path) -> list[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(
            f"{path}: not a readable Parquet file ({one_line(exc)}); re-export it as Parquet"
        ) from None
    return [(f"row {i}", row) for i, row in enumerate(table.to_pylist(), start=1)]


def _read_csv(path: Path) -> list[tuple[str, dict]]:
    """Cells are read as text (no type guessing: ``007`` stays ``"007"``); empty cells are None."""
    import io

    import pandas as pd

    text = read_utf8(path)
    if not text.strip():
        return []
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, ValueError) as exc:
        raise UserError(f"{path}: not a well-formed CSV file ({one_line(exc)}); fix it") from None
    rows = []
    for i, record in enumerate(frame.to_dict(orient="records"), start=1):
        row = {str(key): _none_if_nan(value) for key, value in record.items()}
        rows.append((f"row {i}", row))
    return rows


def _none_if_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


_YAML_NODES = 100_000
"""Most values YAML aliases may add to a file's own; configs and spaces hold hundreds."""


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a syntax error names the file, line and column.

    Aliases are expanded by whatever reads the result (a few hundred bytes of nested
    ``&a [*b, *b, ...]`` become gigabytes), so the node graph is measured before anything is
    built, and a file whose aliases add more than ``_YAML_NODES`` values to those written in
    it (or an alias inside itself) is refused.
    """
    import yaml

    path = Path(path)
    check_file(path)
    loader = yaml.SafeLoader(read_utf8(path))
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1} column {mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or one_line(exc)
        raise UserError(f"{where}: invalid YAML ({problem}); fix the file") from None
    except RecursionError:
        raise UserError(f"{path}: YAML nested too deeply; flatten the file") from None
    finally:
        loader.dispose()


def _check_expansion(root: Any, path: Path) -> None:
    """Count the nodes of ``root`` with every alias expanded, in time linear in the file:
    each distinct node is measured once."""
    import yaml

    distinct: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) not in distinct:
            distinct.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)
            elif isinstance(node, yaml.MappingNode):
                stack.extend(part for pair in node.value for part in pair)
    limit = len(distinct) + _YAML_NODES
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in open_nodes:
            raise UserError(f"{path} line {node.start_mark.line + 1}: a YAML alias refers to a "
                            "node containing itself; write the value out instead")
        open_nodes.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(key) + size(value) for key, value in node.value)
        open_nodes.discard(id(node))
        sizes[id(node)] = total = min(total, limit + 1)
        if total > limit:
            raise UserError(f"{path}: YAML aliases expand to more than {_YAML_NODES:,} values; "
                            "write the values out instead of nesting aliases (&anchor, *alias)")
        return total

    size(root)
