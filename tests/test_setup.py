"""scripts/setup.sh, the one set-up path of both README commands: idempotent, and a failing
step names itself. The test session itself was set up by it (``make test``)."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import REPO


def _setup(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env})


def test_a_second_run_does_nothing_and_says_so() -> None:
    result = _setup(PROMPTSEARCH_MODELS="all")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines.count("  already done") == 2, result.stdout  # venv, install
    assert "gemma-3-270m: already prepared" in result.stdout
    assert "smollm2-135m-instruct: already prepared" in result.stdout
    assert "Collecting" not in result.stdout and "Installing" not in result.stdout
    assert lines[-1] == "setup: done"


def test_a_failing_step_names_itself_and_what_to_do() -> None:
    result = _setup(PROMPTSEARCH_ENGINE="tpu")
    assert result.returncode == 1
    assert result.stderr.strip() == ("setup: step 'choose engine' failed. PROMPTSEARCH_ENGINE "
                                     "must be cpu or gpu, got 'tpu'.")
    result = _setup(PYTHON="/nonexistent/python3")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "setup: step 'check python' failed. Python 3.10 or newer is needed")
