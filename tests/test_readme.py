"""The README's two fresh-machine commands, exercised as they are written."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from promptsearch.pipelines.engine.models import CACHE_ENV, cache_dir
from tests.conftest import REPO
from tests.test_search import _check_run


def _fresh_machine_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Fresh machine", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the fresh-machine section needs a bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_gives_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    demo, test = _fresh_machine_commands()
    assert (demo, test) == ("make demo", "make test")
    ci = [line for line in (REPO / ".ci/run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == [test]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo: setup\n\t\$\(VENV\)/bin/promptsearch run --task summary\n",
                     makefile, re.M)


def test_test_fast_is_a_development_aid_beside_the_two_commands() -> None:
    """`make test-fast` is mentioned, but outside the fresh-machine block (which stays at
    exactly two commands), and runs the tests that need no engine after the same set-up."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Fresh machine", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    assert "test-fast" not in block
    assert "`make test-fast`" in section.replace(block, "")
    makefile = (REPO / "Makefile").read_text()
    target = re.search(r"^test-fast:\n((?:\t.*\n)+)", makefile, re.M)
    assert target, "the Makefile needs a test-fast target"
    test = re.search(r"^test:\n((?:\t.*\n)+)", makefile, re.M).group(1).splitlines()
    fast = target.group(1).splitlines()
    assert fast[0] == test[0]  # the same set-up as `make test`
    assert fast[-1].startswith("\t$(VENV)/bin/python -m pytest ")
    assert fast[-1].endswith(' -m "not engine"')


@pytest.mark.engine
def test_demo_command_runs_the_main_job_on_the_embedded_default(tmp_path: Path) -> None:
    """As a newcomer's first run: an empty generation cache (the prepared models linked)."""
    demo, _ = _fresh_machine_commands()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(cache_dir() / "models")
    env = {**os.environ, CACHE_ENV: str(cache)}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(demo.split(), cwd=REPO, capture_output=True, text=True,
                            timeout=1200, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = REPO / re.search(r"run directory: (\S+)", result.stderr).group(1)
    summary = _check_run(run_dir, "summary", trials=16)
    assert summary["model"] == "gemma-3-270m" and summary["data"] == "bundled summary data"
    assert summary["best"]["validation"] >= summary["baseline"]["validation"]
    assert json.loads((run_dir / "summary.json").read_text())["wall_seconds"] > 0
    assert "setup: done" in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cache"]["misses"] > 0  # generated, not read from an earlier run
