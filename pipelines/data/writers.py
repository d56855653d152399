"""Atomic writers: a file is either absent, its old self or complete, never half-written.

Each file is written to a temporary file beside it (created with mode ``0666`` so the umask
decides, as for any new file), flushed to disk (``fsync``), renamed over the target and then
the directory is flushed, so that the rename itself survives a power cut. Several files written
as a unit (``atomic_paths``: the Parquet + JSONL pair of ``write_table``) are all written and
flushed before the first rename: if any write fails, no target changes. The residual window is
the two ``rename`` calls themselves (microseconds, no data written between them): a crash
exactly there leaves the new first file beside the old second one.

Output guards (``refuse_overwrite``) live here too: no command may overwrite one of its own
input files, or an existing output unless the user asked for it; and ``output_errors``, which
turns a failed write into one line saying how to continue.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from promptsearch.pipelines.errors import UserError, one_line

TABLE_SUFFIXES = (".parquet", ".jsonl")


def _make_dirs(directory: Path) -> None:
    """``mkdir -p`` that also flushes each new directory's entry in its parent."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):
            new.mkdir()
        _fsync_dir(new.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_temporary(path: Path) -> Path:
    """An empty file beside ``path`` named ``.NAME.RANDOM.tmp``, mode ``0666 & ~umask``."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Yield one temporary path beside each of ``paths``; when the block succeeds, flush them
    all to disk, then rename each over its target and flush the directories. If the block
    fails, every target keeps its old content (or stays absent)."""
    targets = [Path(p) for p in paths]
    temporaries: list[Path] = []
    try:
        for target in targets:
            _make_dirs(target.parent)
            temporaries.append(_new_temporary(target))
        yield list(temporaries)
        for tmp in temporaries:
            _fsync_file(tmp)
        for tmp, target in zip(temporaries, targets, strict=True):
            os.replace(tmp, target)
        for directory in dict.fromkeys(t.parent for t in targets):
            _fsync_dir(directory)
    finally:
        for tmp in temporaries:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    with atomic_paths([path]) as (tmp,):
        yield tmp


def stale_temporaries(directory: Path, targets: Iterable[str]) -> list[Path]:
    """The temporary files that a process killed while writing ``targets`` (paths relative to
    ``directory``) left beside them; no other file, so a user's own ``.x.tmp`` is safe."""
    found: list[Path] = []
    for name in targets:
        target = directory / name
        if target.parent.is_dir():
            found += sorted(target.parent.glob(f".{glob.escape(target.name)}.*.tmp"))
    return found


def remove_stale_temporaries(directory: Path, targets: Iterable[str]) -> None:
    """Delete the temporaries a killed writer of ``targets`` left in ``directory``."""
    for stale in stale_temporaries(directory, targets):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def _dump_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def _dump_parquet(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(list(rows)), path)


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        _dump_jsonl(tmp, rows)


def write_parquet(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        _dump_parquet(tmp, rows)


def table_paths(stem: str | Path) -> tuple[Path, Path]:
    """``<stem>.parquet`` and ``<stem>.jsonl`` (a stem given with either suffix loses it)."""
    stem = Path(stem)
    if stem.suffix in TABLE_SUFFIXES:
        stem = stem.with_suffix("")
    return stem.parent / f"{stem.name}.parquet", stem.parent / f"{stem.name}.jsonl"


def write_table(stem: str | Path, rows: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``rows`` as ``<stem>.parquet`` and ``<stem>.jsonl`` as a unit; return both paths.

    Both are written and flushed before either replaces an old file: a failure (a full disk,
    a bad value) leaves both old files as they were.
    """
    parquet, jsonl = table_paths(stem)
    with atomic_paths([parquet, jsonl]) as (parquet_tmp, jsonl_tmp):
        _dump_parquet(parquet_tmp, rows)
        _dump_jsonl(jsonl_tmp, rows)
    return parquet, jsonl


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one existing file (through symlinks, ``..`` or hard links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def input_files(*sources: str | Path | None) -> list[Path]:
    """The files a command reads: each file given, and the files directly in a directory."""
    found: list[Path] = []
    for source in sources:
        if source is None:
            continue
        path = Path(source)
        if path.is_dir():
            found.extend(p for p in sorted(path.iterdir()) if p.is_file())
        elif path.exists():
            found.append(path)
    return found


def refuse_overwrite(outputs: Iterable[Path], *, inputs: Iterable[Path], option: str,
                     overwrite: bool, hint: str = "") -> None:
    """Raise ``UserError`` before anything runs if an output would replace an input (never
    allowed) or an existing file (only with ``--overwrite``), or is a directory."""
    inputs = list(inputs)
    for output in outputs:
        for source in inputs:
            if same_file(output, source):
                alias = "" if output == source else f" (the same file as {source})"
                raise UserError(f"{option}: {output} is an input of this command{alias}; "
                                "it would be overwritten: choose another output path")
        if output.is_dir():
            raise UserError(f"{option}: {output} is a directory; choose another output path")
        if output.exists() and not overwrite:
            raise UserError(f"{option}: {output} already exists; choose another output path "
                            f"{hint}or pass --overwrite to replace it")



@contextlib.contextmanager
def output_errors(where: Path, *, cached: bool) -> Iterator[None]:
    """A failed write (a full disk) as one line saying how to continue: the generations are
    in the cache (``cached``), so the same command writes them without generating them
    again."""
    try:
        yield
    except OSError as exc:
        again = ("run the same command again: the finished generations come from the "
                 "generation cache" if cached else "sampled generations without --seed are "
                 "not cached and will be made again")
        raise UserError(f"cannot write the outputs in {where} ({exc.strerror or one_line(exc)}"
                        "); a file not "
                        f"written keeps its old content; {again}") from None
