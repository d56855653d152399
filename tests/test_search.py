"""`promptsearch run`: Ray Tune + Optuna + early stopping on the real engine, end to end through the CLI.

The runs are in-process (``run_cli``, on the session's engines), except the one a SIGKILL
ends, which needs a process (and Ray instance) of its own."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO, run_cli

SMALL = ["--trials", "4", "--chunks", "2", "--max-validation", "8", "--max-test", "6"]


def _rescore(task: str, predictions: Path) -> dict[str, float]:
    result = run_cli("score", "--task", task, "--predictions", str(predictions))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _check_run(run_dir: Path, task: str, trials: int) -> dict:
    for name in ("run.yaml", "space.yaml", "best.yaml", "baseline.yaml", "summary.json",
                 "trials.parquet", "report.md", "optuna.db", "optimization_history.png",
                 "score_by_template.png", "predictions/validation.parquet",
                 "predictions/validation.jsonl", "predictions/test.parquet",
                 "predictions/test.jsonl"):
        assert (run_dir / name).exists(), name
    assert (run_dir / "tune/search").is_dir()
    # Nothing outside the list of what a run writes (what --force may delete).
    from promptsearch.search.run import RUN_DIRS, RUN_FILES

    written = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}
    assert {f for f in written if f.split("/")[0] not in RUN_DIRS} <= set(RUN_FILES), written
    summary = json.loads((run_dir / "summary.json").read_text())
    metric = summary["metric"]
    # The run keeps the demos it drew from: every one carries an answer (what serve reads).
    from promptsearch.pipelines.data.readers import read_records
    from promptsearch.pipelines.tasks import load_task

    demos = read_records(run_dir / "fewshot.jsonl")
    answer = load_task(task).answer_field
    assert all(d.get(answer) not in (None, "", []) for d in demos)
    rows = pq.read_table(run_dir / "trials.parquet").to_pylist()
    ran = [r for r in rows if r["state"] != "duplicate"]  # repeats are recorded, not run
    assert len(ran) == trials == summary["trials"]["run"]
    baseline = yaml.safe_load((run_dir / "baseline.yaml").read_text())
    assert rows[0]["config"] == baseline  # the baseline is the first trial
    best = max((r for r in rows if r["state"] == "complete"), key=lambda r: r["score"])
    assert yaml.safe_load((run_dir / "best.yaml").read_text()) == best["config"]
    # The best trial's score is what `score` recomputes from the saved validation predictions,
    # and the test predictions are the best configuration's, scored as the summary says.
    validation = _rescore(task, run_dir / "predictions/validation.jsonl")
    assert validation[metric] == pytest.approx(best["score"])
    assert validation[metric] == pytest.approx(summary["best"]["validation"])
    test = _rescore(task, run_dir / "predictions/test.parquet")
    assert test == pytest.approx(summary["best"]["metrics_test"])
    assert summary["baseline"]["test"] is not None and summary["gain_test"] == pytest.approx(
        summary["best"]["test"] - summary["baseline"]["test"])
    report = (run_dir / "report.md").read_text()
    assert "| baseline |" in report and "| best |" in report
    _check_best_minus_baseline(run_dir, task, summary, report)
    return summary


def _check_best_minus_baseline(run_dir: Path, task: str, summary: dict, report: str) -> None:
    """summary.json's paired bootstrap intervals are what the saved per-row outputs give:
    the baseline ran on every validation row, and ``compare RUN`` recomputes the same
    interval from predictions/ and predictions/baseline/."""
    metric = summary["metric"]
    for split in ("validation", "test"):
        interval = summary["best_minus_baseline"][split]
        baseline = _rescore(task, run_dir / f"predictions/baseline/{split}.jsonl")
        assert baseline[metric] == pytest.approx(summary["baseline"][split])
        rows = len((run_dir / f"predictions/baseline/{split}.jsonl").read_text().splitlines())
        assert interval["rows"] == rows and interval["resamples"] == 2000
        assert interval["difference"] == pytest.approx(
            summary["best"][split] - summary["baseline"][split])
        assert interval["low"] <= interval["difference"] <= interval["high"]
        assert interval["separated"] == (not interval["low"] <= 0 <= interval["high"])
        again = run_cli("compare", str(run_dir), "--split", split)
        assert again.returncode == 0, again.stderr
        assert (f"on {split} {metric}: {interval['difference']:+.2f}, 95% interval "
                f"[{interval['low']:+.2f}, {interval['high']:+.2f}] over {rows} rows"
                in again.stdout), again.stdout
    assert "### How sure is this" in report and (run_dir / "best_minus_baseline.png").exists()
    validation = summary["best_minus_baseline"]["validation"]
    said = "could not separate best from baseline" in report
    assert said == (not validation["separated"]), report


def _check_final_lines(stdout: str, summary: dict) -> None:
    """The run's last lines: best - baseline with its interval; when validation cannot
    separate them, the very last line says so and how many validation rows would."""
    validation = summary["best_minus_baseline"]["validation"]
    assert (f"validation {validation['difference']:+.2f} [{validation['low']:+.2f}, "
            f"{validation['high']:+.2f}] ({validation['rows']} rows)") in stdout, stdout
    last = stdout.strip().splitlines()[-1]
    if validation["separated"]:
        assert "could not separate" not in stdout
    else:
        assert last.startswith("The search could not separate best from baseline"), last
        needed = validation["rows_needed"]
        assert last.endswith(f"{'—' if needed is None else f'about {needed}'}."), last


@pytest.mark.engine
@pytest.mark.parametrize("task", ["qa", "instruct"])  # summary: tests/test_readme.py
def test_small_search_end_to_end(tmp_path: Path, task: str) -> None:
    run_dir = tmp_path / "run"
    extra = ["--max-model-len", "2048"] if task != "instruct" else []
    result = run_cli("run", "--task", task, *SMALL, *extra, "--out", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _check_run(run_dir, task, trials=4)
    assert "budget: 4 trials x 8 validation examples" in result.stderr
    assert "trial 0 chunk 1/2" in result.stderr  # live progress: the baseline is trial 0
    assert f"test predictions: {run_dir}/predictions/test.parquet" in result.stdout
    assert summary["cache"]["hits"] > 0  # the final validation run re-uses the search's rows
    _check_final_lines(result.stdout, summary)
    _check_library_log(run_dir, result.stdout + result.stderr)


def _check_library_log(run_dir: Path, terminal: str) -> list[str]:
    """Tune's and Optuna's log lines are in the run's library.log, and not on the terminal
    (without -v the terminal shows promptsearch's own lines only)."""
    lines = (run_dir / "library.log").read_text(encoding="utf-8").splitlines()
    records = [m for m in map(_LOG_LINE.match, lines) if m]
    assert {m["logger"].split(".")[0] for m in records} >= {"ray", "optuna"}, lines
    assert any(m["logger"].startswith("ray.tune.") for m in records), lines
    assert any("A new study created" in m["message"] for m in records), lines  # Optuna, INFO
    for record in records:
        assert record["message"] not in terminal, record.group(0)
    return lines


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (?P<level>[A-Z]+) (?P<logger>[\w.]+): "
                       r"(?P<message>.+)$")


def _trial_params(run_dir: Path) -> list[dict]:
    return [r["params"] for r in pq.read_table(run_dir / "trials.parquet").to_pylist()]


@pytest.mark.engine
def test_same_seed_same_trials_and_resume_after_a_killed_driver(tmp_path: Path) -> None:
    args = ["run", "--task", "qa", "--trials", "6", "--chunks", "2", "--max-validation", "8",
            "--max-test", "6", "--seed", "3", "--max-model-len", "2048"]
    first = tmp_path / "first"
    result = run_cli(*args, "--out", str(first))
    assert result.returncode == 0, result.stderr[-3000:]

    second = tmp_path / "second"
    proc = subprocess.Popen([sys.executable, "-m", "promptsearch.search", *args, "--out",
                             str(second)], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 600
    for line in proc.stderr:
        # the first report: the first rung's trials are generating together
        if (line.startswith("[") and " chunk 1/2 " in line) or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
    proc.wait(timeout=60)
    assert not (second / "summary.json").exists()

    resumed = run_cli("run", "--resume", str(second))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = _check_run(second, "qa", trials=6)
    # The killed driver's process started Ray and the study; the resume appended its own.
    lines = _check_library_log(second, resumed.stdout + resumed.stderr)
    assert any("Started a local Ray instance" in line for line in lines), lines
    assert sum("A new study created" in line for line in lines) == 2, lines
    assert _trial_params(second) == _trial_params(first)
    assert (second / "best.yaml").read_text() == (first / "best.yaml").read_text()
    for split in ("validation", "test"):
        assert (second / f"predictions/{split}.jsonl").read_text() == \
            (first / f"predictions/{split}.jsonl").read_text()
    assert summary["cache"]["misses"] == 0  # nothing generated again


@pytest.mark.engine
@pytest.mark.parametrize("scheduler", ["halving", "asha"])
def test_early_stopping_stops_a_clearly_bad_configuration(tmp_path: Path, scheduler: str) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "templates": ["jglue-extract"],
        "fewshot": {"k": [0, 2], "selector": ["first"]},
        # max_tokens 1 cuts every answer to one token: clearly worse
        "sampling": {"temperature": [0.0], "max_tokens": [32, 1], "stop": {"newline": ["\n"]},
                     "repetition_penalty": [1.0, 1.05]},
        "parse": {"extract": ["strip_prefix", "first_line", "until_period"],
                  "line": ["first_line"]},  # 16 configurations: 8 distinct trials to find
    }, allow_unicode=True))
    run_dir = tmp_path / "run"
    result = run_cli("run", "--task", "qa", "--space", str(space), "--trials", "8",
                     "--chunks", "4", "--max-validation", "16", "--max-test", "4",
                     "--scheduler", scheduler, "--max-model-len", "2048", "--out", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = pq.read_table(run_dir / "trials.parquet").to_pylist()
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert pruned, [(r["params"], r["chunk_scores"]) for r in rows]
    assert all(len(r["chunk_scores"]) < 4 for r in pruned)
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    assert best["sampling"]["max_tokens"] == 32
    if scheduler == "halving":
        # One bracket of 8 cut by 3 at chunks 1 and 3: 8 trials run chunk 1, the best 3 of
        # them (by their chunk-1 score) run to chunk 3, the best of those finishes.
        rows = [r for r in rows if r["state"] != "duplicate"]  # repeats never ran
        assert sorted(len(r["chunk_scores"]) for r in rows) == [1, 1, 1, 1, 1, 3, 3, 4]
        promoted = [r for r in rows if len(r["chunk_scores"]) >= 3]
        stopped = [r for r in rows if len(r["chunk_scores"]) == 1]
        assert min(r["chunk_scores"][0] for r in promoted) >= \
            max(r["chunk_scores"][0] for r in stopped)
        finalist = max(promoted, key=lambda r: len(r["chunk_scores"]))
        others = [r for r in promoted if r is not finalist]
        assert finalist["score"] is not None
        assert all(_running(finalist, 3) >= _running(r, 3) for r in others)


def _running(row: dict, chunks: int) -> float:
    """The running score after ``chunks`` chunks (equal-size chunks: the mean of chunk scores
    for a mean metric such as char_f1)."""
    return sum(row["chunk_scores"][:chunks]) / chunks


@pytest.mark.parametrize(("space", "message"), [
    ({"templates": ["no-such-template"]}, "unknown template 'no-such-template'"),
    ({"fewshot": {"k": [0, 500]}}, "fewshot.k=500 but the few-shot pool has only 23"),
    ({"fewshot": {"selector": ["best"]}}, "unknown fewshot.selector 'best'"),
])
def test_bad_space_fails_before_any_trial(tmp_path: Path, space: dict, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    result = run_cli("run", "--task", "qa", "--space", str(path), "--out",
                     str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "trials.parquet").exists()


def test_trials_are_pinned_to_the_driver_node(ray_session: None) -> None:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from promptsearch.search.driver import _driver_node_resource

    pin = _driver_node_resource()
    assert pin == {f"node:{ray.util.get_node_ip_address()}": 0.001}
    # Tune turns the trial's resources into a one-bundle placement group: Ray must place it.
    pg = placement_group([{"CPU": 0.001, **pin}])
    try:
        assert ray.get(pg.ready(), timeout=30)
    finally:
        remove_placement_group(pg)
