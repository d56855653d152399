"""Nothing of the user's is lost (issue 12, section 2), through the real CLI.

- ``run --force`` deletes only the files a run writes, never other files or an input;
- no command overwrites one of its inputs, a run's outputs, or (without ``--overwrite``) an
  earlier output; each refusal is one line, before any engine starts, and changes nothing;
- files are flushed to disk with their directory, get the umask's mode, and the Parquet +
  JSONL pair is replaced as a unit;
- ``generate`` and ``eval`` keep finished generations in the generation cache, so a re-run
  after a failure generates nothing again.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptsearch.pipelines.data import writers
from promptsearch.pipelines.engine.models import CACHE_ENV, cache_dir
from tests.conftest import REPO, run_cli

QA_DIR = REPO / "pipelines/tasks/data/qa"
RUN_QA = ["run", "--task", "qa", "--max-validation", "2", "--max-test", "2",
          "--max-model-len", "2048"]
STOP_BEFORE_ENGINES = ["--engines", "1000"]
"""A check inside ``execute_run`` that needs Ray but no engine: the run stops there, after
``--out`` has been prepared and ``run.yaml`` written."""

A_RUNS_FILES = [
    "run.yaml", "space.yaml", "best.yaml", "baseline.yaml", "trials.parquet", "report.md",
    "summary.json", "optuna.db", "optimization_history.png", "score_by_k.png",
    "score_by_template.png", "param_importances.png", "predictions/validation.parquet",
    "predictions/validation.jsonl", "predictions/test.parquet", "predictions/test.jsonl",
    "predictions/baseline/test.jsonl", "predictions/baseline/test.parquet",
    "tune/evaluator-inputs.pkl", "tune/search/trial_1/result.json", ".summary.json.ab12.tmp",
    "library.log",
]
USERS_FILES = {"notes.txt": "mine", "predictions/mine.jsonl": '{"id": 1}\n',
               "tune-notes/plan.md": "# plan", "data/extra.csv": "a,b\n", ".draft.tmp": "mine"}


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (directories as None, files with their bytes)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


def _one_error_line(result: object, *fragments: str, progress: bool = False) -> str:
    """The command failed with exit code 2 and one ``error:`` line holding ``fragments``
    (after progress lines, if it generated)."""
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    if progress:
        lines = [line for line in lines if not line.startswith(("generate: ", "eval "))]
    assert result.returncode == 2, result.stderr  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr  # type: ignore
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


# -- run --force ------------------------------------------------------------------------------

def test_force_removes_only_the_files_a_run_wrote(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write(out, {name: "old" for name in A_RUNS_FILES})
    _write(out, USERS_FILES)
    result = run_cli(*RUN_QA, "--out", str(out), "--force", *STOP_BEFORE_ENGINES)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "needs 1000 CPU cores" in result.stderr.strip().splitlines()[-1]
    for name, text in USERS_FILES.items():
        assert (out / name).read_text(encoding="utf-8") == text
    left = {p for p, content in _tree(out).items() if content is not None}
    # this run wrote its inputs (run.yaml, space.yaml, fewshot.jsonl) before it stopped, and a
    # library.log only if a library logged something; nothing of the old run is left
    assert left - {"library.log"} == {*USERS_FILES, "run.yaml", "space.yaml", "fewshot.jsonl"}
    assert b"old" not in (out / "run.yaml").read_bytes()
    assert not (out / "library.log").exists() or b"old" not in (out / "library.log").read_bytes()
    said = [line for line in result.stderr.splitlines() if line.startswith("--force: ")]
    assert len(said) == 1, result.stderr
    assert f"removed the previous run in {out}" in said[0]
    assert "kept 5 file(s) promptsearch did not write" in said[0]
    assert "notes.txt" in said[0]


def test_force_refuses_a_directory_that_is_not_a_run_but_holds_a_run_file_name(
        tmp_path: Path) -> None:
    out = tmp_path / "mine"
    _write(out, {"report.md": "# my own report", "notes.txt": "mine"})
    before = _tree(tmp_path)
    result = run_cli(*RUN_QA, "--out", str(out), "--force", *STOP_BEFORE_ENGINES)
    _one_error_line(result, f"--out {out}: not a promptsearch run", "report.md")
    assert _tree(tmp_path) == before


def test_force_never_deletes_an_input_of_the_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write(out, {"run.yaml": "task: qa\n", "summary.json": "{}"})
    data = out / "predictions" / "validation.jsonl"  # a previous run's file, now an input
    data.parent.mkdir()
    shutil.copy(QA_DIR / "validation.jsonl", data)
    before = _tree(tmp_path)
    result = run_cli(*RUN_QA, "--data", str(data), "--out", str(out), "--force",
                     *STOP_BEFORE_ENGINES)
    _one_error_line(result, f"--force: {data} is an input of this run")
    assert _tree(tmp_path) == before


# -- no command overwrites its inputs or earlier outputs --------------------------------------

@pytest.mark.parametrize("case", ["stem", "jsonl suffix", "symlink", "hard link", "overwrite"])
def test_generate_never_writes_over_its_input(tmp_path: Path, case: str) -> None:
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "こんにちは"}\n', encoding="utf-8")
    out, extra = tmp_path / "prompts", []
    if case == "jsonl suffix":
        out = tmp_path / "prompts.jsonl"
    elif case == "symlink":
        (tmp_path / "link.jsonl").symlink_to(source)
        out = tmp_path / "link"
    elif case == "hard link":
        os.link(source, tmp_path / "linked.jsonl")
        out = tmp_path / "linked"
    elif case == "overwrite":
        extra = ["--overwrite"]  # allows replacing outputs, never inputs
    before = _tree(tmp_path)
    result = run_cli("generate", str(source), "--out", str(out), *extra)
    _one_error_line(result, "is an input of this command", "choose another output path")
    assert _tree(tmp_path) == before


def test_generate_refuses_an_existing_output_without_overwrite(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "こんにちは"}\n', encoding="utf-8")
    (tmp_path / "in.generated.parquet").write_bytes(b"an earlier run's output")
    before = _tree(tmp_path)
    result = run_cli("generate", str(source))
    _one_error_line(result, "in.generated.parquet already exists", "--overwrite")
    assert _tree(tmp_path) == before


def test_eval_refuses_a_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _write(run_dir, {"run.yaml": "task: qa\n", "summary.json": "{}",
                     "predictions/validation.jsonl": "{}\n"})
    before = _tree(tmp_path)
    result = run_cli("eval", "--task", "qa", "--max-examples", "2", "--out", str(run_dir),
                     "--overwrite")
    _one_error_line(result, f"--out {run_dir}: holds a promptsearch run")
    assert _tree(tmp_path) == before


def test_eval_refuses_an_earlier_evals_outputs_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    _write(out, {"metrics.json": "{}"})
    before = _tree(tmp_path)
    result = run_cli("eval", "--task", "qa", "--max-examples", "2", "--out", str(out))
    _one_error_line(result, "metrics.json already exists", "--overwrite")
    assert _tree(tmp_path) == before


def test_eval_never_writes_over_its_data(tmp_path: Path) -> None:
    """``--data`` is a directory of split files that ``--out``'s predictions would replace."""
    out = tmp_path / "eval"
    shutil.copytree(QA_DIR, out / "predictions")
    before = _tree(tmp_path)
    result = run_cli("eval", "--task", "qa", "--max-examples", "2", "--data",
                     str(out / "predictions"), "--out", str(out), "--overwrite")
    _one_error_line(result, "is an input of this command")
    assert _tree(tmp_path) == before


def test_score_per_row_never_writes_over_the_predictions(tmp_path: Path) -> None:
    predictions = tmp_path / "p.jsonl"
    rows = [json.loads(line) for line in (QA_DIR / "validation.jsonl").read_text().splitlines()]
    writers.write_jsonl(predictions, [{"id": r["id"], "output": r["answers"][0]} for r in rows])
    before = _tree(tmp_path)
    result = run_cli("score", "--task", "qa", "--predictions", str(predictions),
                     "--references", str(QA_DIR / "validation.jsonl"),
                     "--per-row", str(tmp_path / "." / "p.jsonl"))
    _one_error_line(result, "--per-row", "is an input of this command")
    assert _tree(tmp_path) == before


# -- how files are written ---------------------------------------------------------------------

@pytest.fixture
def umask_027() -> Iterator[None]:
    previous = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(previous)


def _score_with_per_row(tmp_path: Path) -> Path:
    predictions = tmp_path / "p.jsonl"
    rows = [json.loads(line) for line in (QA_DIR / "validation.jsonl").read_text().splitlines()]
    predictions.write_text("".join(json.dumps({"id": r["id"], "output": r["answers"][0]},
                                              ensure_ascii=False) + "\n" for r in rows))
    per_row = tmp_path / "rows" / "per_row.jsonl"
    result = run_cli("score", "--task", "qa", "--predictions", str(predictions),
                     "--references", str(QA_DIR / "validation.jsonl"), "--per-row", str(per_row))
    assert result.returncode == 0, result.stderr
    return per_row


def test_written_files_get_the_umasks_mode(tmp_path: Path, umask_027: None) -> None:
    per_row = _score_with_per_row(tmp_path)
    assert stat.S_IMODE(per_row.stat().st_mode) == 0o640  # 0666 & ~027, not mkstemp's 0600


def test_a_written_file_and_its_directory_are_flushed_to_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: list[str] = []
    fsync = os.fsync

    def recording(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    per_row = _score_with_per_row(tmp_path)
    file_synced = [p for p in flushed if Path(p).name.startswith(f".{per_row.name}.")]
    assert file_synced, flushed  # the temporary file's data, before the rename
    after_rename = flushed[flushed.index(file_synced[-1]) + 1:]
    assert str(per_row.parent) in after_rename, flushed  # the rename itself
    assert str(per_row.parent.parent) in flushed  # the new rows/ directory's entry


# -- generations survive a failed write (engine) ----------------------------------------------

def _own_cache(directory: Path) -> dict[str, str]:
    """An empty generation cache (prepared models shared), so counts are this test's own."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "models").symlink_to(cache_dir() / "models")
    return {CACHE_ENV: str(directory)}


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """The JSONL half of every table write fails as on a full disk, after writing a part."""
    def full(path: Path, rows: object) -> None:
        path.write_text('{"half": ', encoding="utf-8")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(writers, "_dump_jsonl", full)


def _engine_requests(pool: object) -> int:
    return sum(s.requests for s in pool.engine_stats())  # type: ignore[attr-defined]


@pytest.mark.engine
def test_generate_after_a_full_disk_regenerates_nothing_and_keeps_the_old_pair(
        pool: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "prompt": f"{i}番目の春の歌:"},
                                         ensure_ascii=False) + "\n" for i in range(6)),
                      encoding="utf-8")
    args = ["generate", str(source), "--max-tokens", "8", "--out", str(tmp_path / "out")]
    env = _own_cache(tmp_path / "cache")

    with monkeypatch.context() as m:
        _disk_full(m)
        pool.engine_stats(reset=True)  # type: ignore[attr-defined]
        failed = run_cli(*args, env=env)
    line = _one_error_line(failed, "No space left on device", "run the same command again",
                           progress=True)
    assert _engine_requests(pool) == 6, line
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))

    pool.engine_stats(reset=True)  # type: ignore[attr-defined]
    again = run_cli(*args, env=env)
    assert again.returncode == 0, again.stderr
    assert _engine_requests(pool) == 0  # every row came from the cache
    written = {name: (tmp_path / name).read_bytes() for name in ("out.parquet", "out.jsonl")}
    assert len(written["out.jsonl"].splitlines()) == 6

    with monkeypatch.context() as m:  # a replacement that fails half-way replaces neither
        _disk_full(m)
        _one_error_line(run_cli(*args, "--overwrite", env=env), "No space left on device",
                        progress=True)
    assert {name: (tmp_path / name).read_bytes() for name in written} == written
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cache", "in.jsonl", "out.jsonl", "out.parquet"]


@pytest.mark.engine
def test_eval_after_a_full_disk_regenerates_nothing(
        pool: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "eval"
    args = ["eval", "--task", "qa", "--max-examples", "3", "--out", str(out)]
    env = _own_cache(tmp_path / "cache")
    with monkeypatch.context() as m:
        _disk_full(m)
        pool.engine_stats(reset=True)  # type: ignore[attr-defined]
        _one_error_line(run_cli(*args, env=env), "No space left on device",
                        "run the same command again", progress=True)
    assert _engine_requests(pool) == 3
    assert not (out / "metrics.json").exists()
    pool.engine_stats(reset=True)  # type: ignore[attr-defined]
    again = run_cli(*args, env=env)
    assert again.returncode == 0, again.stderr
    assert _engine_requests(pool) == 0
    assert json.loads((out / "metrics.json").read_text())["examples"] == 3


@pytest.mark.engine
def test_force_on_a_real_run_keeps_only_the_users_files(pool: object, tmp_path: Path) -> None:
    """Every file a real run writes is one ``--force`` removes: nothing of it is "kept"."""
    out = tmp_path / "run"
    args = [*RUN_QA, "--trials", "2", "--chunks", "1", "--out", str(out)]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    _write(out, {"notes.txt": "mine"})
    second = run_cli(*args, "--force")
    assert second.returncode == 0, second.stderr[-3000:]
    said = [line for line in second.stderr.splitlines() if line.startswith("--force: ")]
    assert len(said) == 1 and said[0].endswith(
        "kept 1 file(s) promptsearch did not write: notes.txt"), second.stderr[-3000:]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert (out / "summary.json").is_file()
