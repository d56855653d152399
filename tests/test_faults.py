"""Faults injected for real into a running search: a killed engine process, a killed trial
process, a killed driver. The run must finish with the result an unfaulted run reaches from
the same generations.

Every faulted run has its own empty generation cache (prepared models are shared), so that
engines really generate while the faults hit them; it is a process of its own (one engine).
Its reference is a replay on its own cache, in-process on the session's engines (``_replay``),
as is a ``--resume`` after a killed driver.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from promptsearch.pipelines.engine.models import CACHE_ENV, cache_dir
from tests.conftest import REPO, engine_core_pids, run_cli

pytestmark = pytest.mark.engine

ARGS = ["run", "--task", "qa", "--trials", "4", "--chunks", "2", "--max-validation", "8",
        "--max-test", "6", "--seed", "5", "--max-model-len", "2048"]


def _own_cache(directory: Path) -> dict[str, str]:
    """Environment for runs with an empty generation cache in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "models").symlink_to(cache_dir() / "models")
    return {CACHE_ENV: str(directory)}


def _trials(run_dir: Path) -> list[dict]:
    return pq.read_table(run_dir / "trials.parquet").to_pylist()


def _descendant(root: int, title: str) -> psutil.Process | None:
    """The process under ``root`` whose title (Ray sets ``ray::Actor.method``) has ``title``."""
    for proc in psutil.Process(root).children(recursive=True):
        try:
            if title in " ".join(proc.cmdline()):
                return proc
        except psutil.NoSuchProcess:
            continue
    return None


def _start(out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, **_own_cache(out.parent / "cache")}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "promptsearch.search", *ARGS, *extra,
                             "--out", str(out)], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)


def _run_and_kill(out: Path, when: Callable[[str], bool], title: str, *extra: str,
                  ) -> tuple[subprocess.Popen[str], int]:
    """Start a run, SIGKILL the process titled ``title`` once a progress line satisfies
    ``when``, and let the run go on. Returns the run and the killed pid."""
    proc = _start(out, *extra)
    assert proc.stderr is not None
    deadline = time.monotonic() + 600
    for line in proc.stderr:
        if when(line) or time.monotonic() > deadline:
            break
    victim = None
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        victim = _descendant(proc.pid, title)
        time.sleep(0.05)
    assert victim is not None, f"no process titled {title!r} under the run"
    victim.kill()
    victim.wait(timeout=30)
    return proc, victim.pid


def _finish(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    rest = proc.stderr.read()
    proc.wait(timeout=900)
    assert proc.returncode == 0, rest[-3000:]
    return rest


def _replay(run_dir: Path) -> Path:
    """The reference a faulted run is held to: the same command replayed on the faulted run's
    own generation cache, without faults. Every generation must come from that cache (the
    fault lost none), and the replay must reach the same trials, scores and outputs (the
    fault changed nothing but timing). A fresh-cache run is no reference on CPU: vLLM's CPU
    kernels can change a greedy token when a prompt is batched with other rows."""
    replay = run_dir.parent / "replay"
    result = run_cli(*ARGS, "--out", str(replay), env={CACHE_ENV: str(run_dir.parent / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((replay / "summary.json").read_text())
    assert summary["cache"]["misses"] == 0, "the faulted run lost generations"
    assert all(n == 1 for n in summary["model_loads"])
    return replay


def _same_result(run_dir: Path, reference: Path) -> None:
    ours, theirs = _trials(run_dir), _trials(reference)
    assert [t["params"] for t in ours] == [t["params"] for t in theirs]
    assert [t["state"] for t in ours] == [t["state"] for t in theirs]
    assert [t["score"] for t in ours] == pytest.approx([t["score"] for t in theirs])
    assert (run_dir / "best.yaml").read_text() == (reference / "best.yaml").read_text()
    ours_summary = json.loads((run_dir / "summary.json").read_text())
    theirs_summary = json.loads((reference / "summary.json").read_text())
    for key in ("validation", "test"):
        assert ours_summary["best"][key] == pytest.approx(theirs_summary["best"][key])
    assert ours_summary["trials"] == theirs_summary["trials"]


def _first_report(line: str) -> bool:
    """The first progress line of the search: a rung's trials are generating together."""
    return line.startswith("[") and " chunk 1/2 " in line


def test_engine_killed_mid_search_is_restarted_and_nothing_changes(tmp_path: Path,
                                                                   pool: Any) -> None:
    # ``pool``: the session's engines, which the in-process replay uses, run before and after
    before = engine_core_pids()
    proc, killed = _run_and_kill(tmp_path / "run", _first_report, "EngineActor")
    _finish(proc)
    assert not psutil.pid_exists(killed)
    _same_result(tmp_path / "run", _replay(tmp_path / "run"))
    assert all(t["failures"] == 0 for t in _trials(tmp_path / "run"))  # requests retried
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["cache"]["misses"] > 0  # the engines really generated
    assert summary["model_loads"] == [2]  # Ray restarted the engine, which loaded again
    time.sleep(3)
    assert not (engine_core_pids() - before), "an engine process outlived the run"


def _rung_decided() -> Callable[[str], bool]:
    """Every trial has reported chunk 1: the rung is decided at once, the pruned trials stop
    and the survivors, each with a checkpoint at chunk 1, are generating chunk 2. Killing one
    of them then tests the restore; killing at the first report could hit a trial that the
    rung is about to stop (all four report within milliseconds: one batch)."""
    seen = []

    def when(line: str) -> bool:
        seen.extend([line] if _first_report(line) else [])
        if len(seen) < int(ARGS[ARGS.index("--trials") + 1]):
            return False
        time.sleep(0.3)  # the stopped trials leave ``train``
        return True

    return when


def test_a_killed_trial_is_retried_from_its_last_chunk(tmp_path: Path) -> None:
    # ``ImplicitFunc.train``: a trial process waiting for its chunks
    proc, _ = _run_and_kill(tmp_path / "run", _rung_decided(), "ImplicitFunc.train")
    _finish(proc)
    _same_result(tmp_path / "run", _replay(tmp_path / "run"))
    assert sum(t["failures"] for t in _trials(tmp_path / "run")) == 1


def test_a_trial_that_keeps_failing_is_recorded_as_failed_never_as_zero(tmp_path: Path) -> None:
    proc, _ = _run_and_kill(tmp_path / "run", _rung_decided(), "ImplicitFunc.train",
                            "--trial-retries", "0")
    _finish(proc)
    trials = _trials(tmp_path / "run")
    failed = [t for t in trials if t["state"] == "error"]
    assert len(failed) == 1 and failed[0]["failures"] == 1
    assert failed[0]["score"] is None and failed[0]["error"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["trials"]["error"] == 1
    complete = [t["score"] for t in trials if t["state"] == "complete"]
    assert summary["best"]["validation"] == pytest.approx(max(complete))


@pytest.mark.parametrize("moment", ["final run", "writing outputs"])
def test_driver_killed_late_resumes_to_the_same_outputs(tmp_path: Path, moment: str) -> None:
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    assert proc.stderr is not None
    if moment == "final run":
        for line in proc.stderr:
            if line.startswith("best and baseline on "):
                break
    else:  # the first output file appears: kill while the others are being written
        deadline = time.monotonic() + 900
        while not (run_dir / "predictions").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    _consistent(run_dir)

    resumed = run_cli("run", "--resume", str(run_dir), env={CACHE_ENV: str(tmp_path / "cache")})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not _temporaries(run_dir)
    replay = _replay(run_dir)
    _same_result(run_dir, replay)
    for split in ("validation", "test"):
        assert (run_dir / f"predictions/{split}.jsonl").read_text() == \
            (replay / f"predictions/{split}.jsonl").read_text()
    misses = json.loads((run_dir / "summary.json").read_text())["cache"]["misses"]
    if moment == "writing outputs":
        assert misses == 0  # everything was generated before the kill
    else:  # at most the final run's rows that were in flight: the search is not redone
        assert misses <= 8 + 2 * 6


def _temporaries(run_dir: Path) -> list[Path]:
    return list(run_dir.rglob(".*.tmp"))


def _consistent(run_dir: Path) -> None:
    """Whatever a killed driver left: every output file complete (a killed write leaves only
    a temporary file, which --resume removes), and no summary.json (written last) unless
    every output is there."""
    for path in run_dir.rglob("*.jsonl"):
        if "tune" in path.parts or "cache" in path.parts:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            json.loads(line)
    for path in run_dir.rglob("*.parquet"):
        if "tune" not in path.parts:
            pq.read_table(path)
    for path in run_dir.glob("*.yaml"):
        yaml.safe_load(path.read_text(encoding="utf-8"))
    if (run_dir / "summary.json").exists():
        for name in ("best.yaml", "trials.parquet", "predictions/test.parquet"):
            assert (run_dir / name).exists(), name
