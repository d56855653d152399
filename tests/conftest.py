"""Shared fixtures: one Ray instance and one engine pool per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
JSQUAD = SHARED_DATA / "jsquad" / "valid-v1.3.json"

# An engine takes about 5 GB of RAM. The session pool holds two; every command a test runs in
# a subprocess (and `make demo`) gets one more, so that 24 GB machines stay clear of Ray's
# memory monitor. Tests that need several engines in a subprocess pass --engines.
os.environ.setdefault("PROMPTSEARCH_ENGINES", "1")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    # Logical CPUs above the 2 physical cores let the session pool and a second small pool
    # coexist; engines claim physical cores with a lock and share when none is free.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def pool(ray_session: None) -> Iterator[object]:
    """Two gemma-3-270m engines, started once for the whole session (about 50 s)."""
    from promptsearch.pipelines.pool import EnginePool

    with EnginePool("gemma-3-270m", engines=2, max_model_len=2048) as p:
        yield p


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 900,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promptsearch`` as a user would, in a fresh process (its own Ray instance)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "promptsearch.search", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def engine_core_pids() -> set[int]:
    """Processes that are vLLM engine cores (they outlive a sloppy shutdown)."""
    out = subprocess.run(["pgrep", "-f", "EngineCore"], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}
