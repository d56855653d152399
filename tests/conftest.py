"""Shared fixtures: one Ray instance and one engine pool per test session.

The CLI runs in this process (``run_cli``, click's CliRunner) unless the process itself is
what a test checks (exit on a signal, a kill, a server, the README commands): those use
``run_cli_subprocess``. In-process commands that generate with the session's model use the
session pool's engines (``promptsearch.search.runtime.shared_engines``) instead of starting
their own; a test that generates must be marked ``@pytest.mark.engine`` (``make test-fast``
runs the others, and an unmarked test that tries to start an engine fails at once).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
JSQUAD = SHARED_DATA / "jsquad" / "valid-v1.3.json"
SESSION_MODEL = "gemma-3-270m"
SESSION_MAX_MODEL_LEN = 4096  # the CLI's default --max-model-len: every command fits

# An engine takes about 5 GB of RAM. The session pool holds two; every other engine a test
# starts (another model, a subprocess, `make demo`) gets one, so that 24 GB machines stay
# clear of Ray's memory monitor. Tests that need several engines in a subprocess pass --engines.
os.environ.setdefault("PROMPTSEARCH_ENGINES", "1")

# A shell starts background jobs with SIGINT ignored, and their children inherit that: the
# tests that stop a command with Ctrl-C would wait for ever. Take SIGINT back, so the
# commands this session starts get Python's KeyboardInterrupt as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Commands that may start Ray and engines (the others never touch Ray).
_RAY_COMMANDS = {"run", "eval", "generate", "serve"}
_current_test: pytest.FixtureRequest | None = None


def _start_ray() -> None:
    import ray

    if not ray.is_initialized():
        # Logical CPUs above the 2 physical cores let the session pool and a second small
        # pool coexist; engines claim physical cores with a lock and share when none is free.
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    _start_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def pool(ray_session: None) -> Iterator[object]:
    """Two gemma-3-270m engines, started once for the whole session (about 50-80 s).

    While it is up, every in-process command of an engine test that asks for this model (with
    --max-model-len up to 4096) uses a view of it: the same engines, the command's own
    generation cache (read from PROMPTSEARCH_CACHE when the command starts) and context check.
    """
    from promptsearch.pipelines.engine.pool import EnginePool
    from promptsearch.search.runtime import shared_engines

    with EnginePool(SESSION_MODEL, engines=2, max_model_len=SESSION_MAX_MODEL_LEN) as p, \
            shared_engines(p):
        yield p


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the session pool (directly or through a fixture) must say so."""
    unmarked = [item.nodeid for item in items
                if "pool" in getattr(item, "fixturenames", ())
                and item.get_closest_marker("engine") is None]
    if unmarked:
        raise pytest.UsageError("these tests use the engine pool but are not marked "
                                "@pytest.mark.engine: " + ", ".join(unmarked))


@pytest.fixture(autouse=True)
def _current_request(request: pytest.FixtureRequest) -> Iterator[None]:
    """Lets ``run_cli`` request the session pool lazily, for engine tests only."""
    global _current_test
    _current_test = request
    yield
    _current_test = None


@dataclass
class CliResult:
    """What a finished ``promptsearch`` command left: as ``subprocess.CompletedProcess``."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (the CliRunner's, during a command)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


@contextlib.contextmanager
def _warnings_on_stderr() -> Iterator[None]:
    """As in a fresh process (the CLI's logging.basicConfig, which pytest's own handlers
    pre-empt here): warnings logged during the command appear on its stderr."""
    handler = _CurrentStderr()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def _refuse_engine(self: object, index: int) -> object:
    raise AssertionError("this test is not marked @pytest.mark.engine, yet it started an "
                         "engine; mark it, or stop it earlier")


@contextlib.contextmanager
def _no_engines() -> Iterator[None]:
    """For tests not marked ``engine``: the session pool is not shared with the command, and
    an engine it starts fails at once instead of loading a model for a minute."""
    from promptsearch.pipelines.engine.pool import EnginePool
    from promptsearch.search.runtime import shared_engines

    with shared_engines(None), pytest.MonkeyPatch.context() as mp:
        # EnginePool creates each engine actor here, after its checks (a bad --engines still
        # fails as it would). Should the method be renamed, the guard lapses; tests still pass.
        mp.setattr(EnginePool, "_create_actor", _refuse_engine, raising=False)
        yield


@contextlib.contextmanager
def _in_repo() -> Iterator[None]:
    """Commands run from the repository root, as ``run_cli_subprocess`` runs them."""
    previous = Path.cwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(previous)


def _model(args: tuple[str, ...]) -> str:
    return args[args.index("--model") + 1] if "--model" in args[:-1] else SESSION_MODEL


def run_cli(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """Run ``promptsearch ARGS`` in this process with click's CliRunner, from the repository
    root, with ``env`` set for the command only. In a test marked ``engine``, a command that
    generates with the session model uses the session pool (started now if need be); in any
    other test it may not start an engine. An exception that escapes the command (a
    traceback in a real process) fails the test with its traceback."""
    from click.testing import CliRunner

    from promptsearch.search.cli import main

    request = _current_test
    engine_test = request is not None and request.node.get_closest_marker("engine") is not None
    guard: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if args and args[0] in _RAY_COMMANDS:
        if request is not None:
            request.getfixturevalue("ray_session")
        else:  # a module- or session-scoped fixture: it asks for ``pool`` itself if it must
            _start_ray()
        if engine_test and _model(args) == SESSION_MODEL:
            request.getfixturevalue("pool")
        elif request is not None and not engine_test:
            guard = _no_engines()
    with guard, _in_repo(), _warnings_on_stderr():
        result = CliRunner().invoke(main, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        pytest.fail(f"promptsearch {' '.join(args)} raised {result.exception!r} (a traceback "
                    f"in a real process)\n{trace}\nstderr:\n{result.stderr[-3000:]}")
    return CliResult(list(args), result.exit_code, result.stdout, result.stderr)


def run_cli_subprocess(*args: str, cwd: Path | None = None, timeout: float = 900,
                       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promptsearch`` as a user would, in a fresh process (its own Ray instance and
    engines): only where the process itself is under test."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "promptsearch.search", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def engine_cores(root: int | None = None) -> list[psutil.Process]:
    """vLLM engine core processes (they outlive a sloppy shutdown): on the machine, or under
    process ``root``. Found by their place, a child of an engine actor (Ray titles it
    ``ray::EngineActor...``), not by their own title: vLLM titles them ``VLLM::EngineCore``,
    but setproctitle cannot find a spawned process's argv once something has grown its
    environment, and then they keep multiprocessing's command line (seen in CI)."""
    procs = psutil.Process(root).children(recursive=True) if root else psutil.process_iter()
    cores = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            title = " ".join(proc.cmdline())
            parent = proc.parent()
            parent_title = " ".join(parent.cmdline()) if parent else ""
            if "EngineCore" in title or (parent_title.startswith("ray::EngineActor")
                                         and "multiprocessing.spawn" in title):
                cores.append(proc)
    return cores


def engine_core_pids() -> set[int]:
    return {proc.pid for proc in engine_cores()}


_SESSION_START = time.monotonic()


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every CI log shows how long the suite took (the budget is 40 minutes on 2 cores)."""
    terminalreporter.write_line(f"suite duration: {time.monotonic() - _SESSION_START:.0f} s")
