"""Atomic writers: a file is either absent or complete, never half-written."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def remove_stale_temporaries(directory: Path) -> None:
    """Delete the temporary files of ``atomic_path`` that a killed process left behind."""
    for stale in directory.rglob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def _write_with(path: Path, writer: Callable[[IO[str]], None]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        writer(fh)


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    def dump(fh: IO[str]) -> None:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    _write_with(Path(path), dump)


def write_parquet(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(list(rows))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_table(stem: str | Path, rows: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``rows`` as ``<stem>.parquet`` and ``<stem>.jsonl``; return both paths."""
    stem = Path(stem)
    if stem.suffix in (".parquet", ".jsonl"):
        stem = stem.with_suffix("")
    parquet, jsonl = stem.parent / f"{stem.name}.parquet", stem.parent / f"{stem.name}.jsonl"
    write_parquet(parquet, rows)
    write_jsonl(jsonl, rows)
    return parquet, jsonl
