"""`promptsearch generate` end to end through the CLI, and its answers to bad input.

In-process (``run_cli``) except where a process of its own is the point: Ctrl-C of a real
run, and greedy outputs reproduced by a separate process with its own engine."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, engine_core_pids, run_cli, run_cli_subprocess

QA = REPO / "pipelines/tasks/data/qa/validation.jsonl"


@pytest.mark.engine
def test_generate_with_template_writes_parquet_and_jsonl(tmp_path: Path) -> None:
    out = tmp_path / "answers"
    template = "{{ context }}\n質問: {{ question }}\n回答:"
    result = run_cli("generate", str(QA), "--template", template, "--max-tokens", "12",
                     "--stop", "\\n", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    inputs = [json.loads(line) for line in QA.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in inputs]
    table = pq.read_table(tmp_path / "answers.parquet").to_pylist()
    assert table == rows
    for row in rows:
        assert {"context", "question", "answers", "output", "prompt_tokens", "output_tokens",
                "finish_reason", "seconds", "error"} <= set(row)
        assert row["error"] is None and "\n" not in row["output"]
        assert 0 < row["output_tokens"] <= 12
    assert "generate: " in result.stderr  # progress
    summary = result.stdout.strip().splitlines()[-1]
    total = sum(r["output_tokens"] for r in rows)
    assert summary.startswith(f"{len(rows)} rows, {total} output tokens")
    assert "tok/s" in summary


@pytest.mark.engine
def test_generate_chat_messages_from_csv_with_the_instruct_model(tmp_path: Path) -> None:
    source = tmp_path / "questions.csv"
    with source.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "prompt"])
        writer.writerows([["a", "What is the capital of France?"], ["b", "Say hello."]])
    result = run_cli("generate", str(source), "--chat", "--model", "smollm2-135m-instruct",
                     "--max-tokens", "16", "--out", str(tmp_path / "chat"))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "chat.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    # The chat template wraps the prompt, so the prompt is much longer than the bare question.
    assert all(r["prompt_tokens"] > 15 and r["output"] for r in rows)


@pytest.mark.engine
def test_ctrl_c_stops_the_engines_and_writes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "many.jsonl"
    # Several token-budget chunks, so the first progress line comes long before the end.
    source.write_text("".join(json.dumps({"prompt": f"第{i}章。昔々、"}, ensure_ascii=False)
                              + "\n" for i in range(2000)), encoding="utf-8")
    before = engine_core_pids()
    proc = subprocess.Popen([sys.executable, "-m", "promptsearch.search", "generate",
                             str(source), "--max-tokens", "64", "--out", str(tmp_path / "o")],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if line.startswith("generate: ") or time.monotonic() > deadline:
            break
    assert engine_core_pids() - before, "the engine should be running by now"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    time.sleep(3)
    assert not (engine_core_pids() - before), "an engine process outlived the run"
    assert not list(tmp_path.glob("o*"))


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, [], "missing.jsonl: file not found"),
        ("good", ["--engines", "0"], "Invalid value for '--engines'"),
        ("good", ["--prompt-column", "nope"], "no column 'nope'"),
        ("good", ["--template", "{{ question }}"], "unknown field 'question'"),
        ("malformed", [], "line 2"),
        ("empty", [], "no records"),
        ("good", ["--model", "no-such-model"], "--model no-such-model: unknown model"),
        ("good", ["--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
    ],
)
def test_generate_bad_input_is_one_clear_line(tmp_path: Path, setup: str | None,
                                              args: list[str], message: str) -> None:
    path = tmp_path / "missing.jsonl"
    if setup is not None:
        path = tmp_path / "in.jsonl"
        path.write_text({"good": '{"prompt": "こんにちは"}\n',
                         "malformed": '{"prompt": "a"}\n{"prompt": \n',
                         "empty": ""}[setup], encoding="utf-8")
    result = run_cli("generate", str(path), *args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("out*"))


@pytest.mark.engine
def test_an_engine_that_cannot_start_fails_early_with_one_line(tmp_path: Path) -> None:
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no-such-architecture"}')
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "こんにちは"}\n', encoding="utf-8")
    start = time.monotonic()
    result = run_cli("generate", str(source), "--model", str(model), "--engines", "1",
                     "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"error: engine for model {model} failed to start: ")
    assert "no-such-architecture" in lines[0]
    assert time.monotonic() - start < 120  # no restarts of an engine that cannot start
    assert not list(tmp_path.glob("out*"))


@pytest.mark.engine
def test_greedy_outputs_are_identical_across_runs(pool, tmp_path: Path) -> None:
    """A separate run (its own process, Ray and engine) reproduces the session pool's greedy
    outputs; the input is Parquet with a prompt column."""
    import pyarrow as pa

    from promptsearch.pipelines.engine.sampling import Sampling
    from tests.test_engine_pool import PROMPTS, assert_same_greedy

    pq.write_table(pa.table({"id": list(range(len(PROMPTS))), "text": PROMPTS}),
                   tmp_path / "in.parquet")
    from promptsearch.pipelines.engine.models import CACHE_ENV, cache_dir

    cache = tmp_path / "cache"  # empty: the outputs must come from that run's own engine
    cache.mkdir()
    (cache / "models").symlink_to(cache_dir() / "models")
    result = run_cli_subprocess("generate", str(tmp_path / "in.parquet"), "--prompt-column",
                                "text", "--max-tokens", "16", "--out", str(tmp_path / "out"),
                                env={CACHE_ENV: str(cache)})
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["id"] for r in rows] == list(range(len(PROMPTS)))
    expected = pool.generate(PROMPTS, Sampling(max_tokens=16))
    assert_same_greedy([r["output"] for r in rows], [g.text for g in expected])
