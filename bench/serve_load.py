"""`promptsearch serve` under load on loopback: a concurrency ramp, then a step above capacity.

Below its capacity the server must answer every request; above it (more than
``--max-ongoing-requests`` + ``--max-queued-requests`` clients at once) it must turn the excess
away with a clean 503 and nothing else: no 500, no reset connection, and it stays healthy.
Each client keeps one request in flight (a closed loop), over real HTTP, with varied inputs
taken from the run's own validation and test rows.

    flock /tmp/promptsearch-engine.lock .venv/bin/python bench/serve_load.py \
        [--run RUN_DIR] [--max-concurrency 32] [--duration 20]

Without ``--run`` a tiny finished run is made first (the arguments of the serve tests). The
ramp (1, 2, 4, ... up to ``--max-concurrency``) stays within ``--max-queued-requests``, so no
request may be rejected there. ``tests/test_serve.py`` imports the load driver from here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
RESULTS = HERE.parent / "results" / "serve_load.json"
# The tiny run the serve tests make: the chat model, two trials, a handful of rows.
RUN_ARGS = ("--task", "qa", "--model", "smollm2-135m-instruct", "--trials", "2",
            "--chunks", "1", "--max-validation", "4", "--max-test", "8")


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the load driver (shared with tests/test_serve.py) ----------------------------------------
@dataclass
class Step:
    """What ``concurrency`` closed-loop clients saw in one step of ``seconds`` (drain included)."""

    concurrency: int
    seconds: float
    ok: int
    rejected: int
    errors: int
    requests_per_s: float
    p50_s: float | None
    p99_s: float | None
    rejected_p50_s: float | None
    statuses: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    reject_sample: dict[str, Any] | None = None
    error_sample: str | None = None


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


_SERIAL = itertools.count()
"""Numbers every request of the run, so no two are the same."""


async def _drive(url: str, bodies: Sequence[dict[str, Any]], concurrency: int,
                 duration: float, headers: dict[str, str], timeout: float,
                 reject_backoff: float) -> Step:
    import httpx

    picks = itertools.cycle(range(len(bodies)))
    ok_lat: list[float] = []
    rej_lat: list[float] = []
    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    samples: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers) as client:
        start = time.monotonic()
        deadline = start + duration

        async def client_loop() -> None:
            while time.monotonic() < deadline:
                # Unique (a number after its last field): serve answers repeats from the
                # generation cache, and this measures the engines.
                body = dict(bodies[next(picks)])
                field = list(body)[-1]
                body[field] = f"{body[field]} ({next(_SERIAL)})"
                sent = time.monotonic()
                try:
                    response = await client.post(url, json=body)
                except httpx.HTTPError as exc:
                    kinds[type(exc).__name__] += 1
                    samples.setdefault("error", f"{type(exc).__name__}: {exc}")
                    continue
                took = time.monotonic() - sent
                statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    ok_lat.append(took)
                elif response.status_code == 503:
                    rej_lat.append(took)
                    samples.setdefault("reject", {
                        "body": response.text[:500],
                        "content_type": response.headers.get("content-type"),
                        "retry_after": response.headers.get("retry-after")})
                    await asyncio.sleep(reject_backoff)
                else:
                    kinds[f"HTTP {response.status_code}"] += 1
                    samples.setdefault("error", f"HTTP {response.status_code}: "
                                                f"{response.text[:500]}")

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        seconds = time.monotonic() - start
    return Step(concurrency=concurrency, seconds=round(seconds, 3), ok=len(ok_lat),
                rejected=len(rej_lat), errors=sum(kinds.values()),
                requests_per_s=len(ok_lat) / seconds, p50_s=percentile(ok_lat, 50),
                p99_s=percentile(ok_lat, 99), rejected_p50_s=percentile(rej_lat, 50),
                statuses=dict(statuses), error_kinds=dict(kinds),
                reject_sample=samples.get("reject"), error_sample=samples.get("error"))


def run_step(url: str, bodies: Sequence[dict[str, Any]], concurrency: int, duration: float, *,
             headers: dict[str, str] | None = None, timeout: float = 300,
             reject_backoff: float = 0.1) -> Step:
    """``concurrency`` clients POST ``bodies`` (in turn) to ``url`` for ``duration`` seconds.

    A client that gets a 503 waits ``reject_backoff`` seconds before its next request, as a
    polite client would, so that the step measures the server and not a busy loop of retries.
    A request still in flight at the deadline is awaited and counted.
    """
    return asyncio.run(_drive(url, bodies, concurrency, duration, headers or {}, timeout,
                              reject_backoff))


def ramp_levels(max_concurrency: int) -> list[int]:
    """1, 2, 4, ... and ``max_concurrency`` itself."""
    levels = [1]
    while levels[-1] * 2 < max_concurrency:
        levels.append(levels[-1] * 2)
    return levels if levels[-1] == max_concurrency else [*levels, max_concurrency]


def task_bodies(run_dir: Path) -> tuple[str, list[dict[str, Any]]]:
    """The run's task and one request body per validation and test row of its own data."""
    from promptsearch.pipelines.data.readers import read_yaml
    from promptsearch.pipelines.data.taskdata import load_task_data
    from promptsearch.pipelines.tasks import load_task

    spec = read_yaml(run_dir / "run.yaml")
    if not isinstance(spec, dict) or not isinstance(spec.get("task"), str):
        raise SystemExit(f"{run_dir / 'run.yaml'}: not a run.yaml written by 'promptsearch run'")
    task = load_task(spec["task"])
    data = load_task_data(task, spec.get("data"), seed=spec.get("seed", 0))
    rows = [*data.validation, *data.test]
    return task.name, [{name: row[name] for name in task.input_fields} for row in rows]


# -- the server process --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ..., starttime at 19)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(root: int) -> dict[int, str]:
    """Every live process under ``root``, with its start time (to tell a reused pid apart)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(proc.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(proc.name))
            starts[int(proc.name)] = fields[19]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = starts[child]
            todo.append(child)
    return found


class ServeProcess:
    """``promptsearch serve RUN_DIR --engines 1`` on a free loopback port, healthy on return."""

    def __init__(self, run_dir: Path, *extra: str, log: Path,
                 startup_timeout: float = 400) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        with log.open("w") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "promptsearch.search", "serve", str(run_dir), "--port",
                 str(self.port), "--engines", "1", *extra], cwd=REPO, stdout=sink,
                stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n"
                                   f"{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(2)
        self.stop()
        raise TimeoutError(f"serve did not become healthy in {startup_timeout:.0f}s")

    def stop(self, timeout: float = 120) -> dict[str, Any]:
        """SIGTERM, wait, then make sure none of its processes is left; say what happened."""
        tree = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        left: list[int] = []
        for _ in range(30):  # Ray's processes exit shortly after the driver
            left = [p for p, start in tree.items() if (f := _stat(p)) and f[19] == start
                    and f[0] != "Z"]
            if not left:
                break
            time.sleep(1)
        if code is None:
            self.proc.kill()
            self.proc.wait()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return {"exit_code": code, "left_behind": left}


# -- the benchmark ------------------------------------------------------------------------------
def make_run(work: Path) -> Path:
    run_dir = work / "run"
    say(f"making a tiny finished run in {run_dir}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "promptsearch.search", "run", *RUN_ARGS,
                           "--engines", "1", "--out", str(run_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"promptsearch run failed:\n{done.stderr[-3000:]}")
    return run_dir


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


HEADER = (f"{'phase':<6} {'conc':>5} {'req/s':>7} {'x c=1':>6} {'p50 s':>7} {'p99 s':>7} "
          f"{'ok':>5} {'errors':>6} {'503s':>5}")


def row(phase: str, step: Step, base: float) -> str:
    return (f"{phase:<6} {step.concurrency:>5} {step.requests_per_s:>7.2f} "
            f"{step.requests_per_s / base:>6.2f} {fmt(step.p50_s):>7} {fmt(step.p99_s):>7} "
            f"{step.ok:>5} {step.errors:>6} {step.rejected:>5}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a finished run directory [default: make one]")
    parser.add_argument("--max-concurrency", type=int, default=32,
                        help="top of the ramp 1, 2, 4, ... [default: 32]")
    parser.add_argument("--duration", type=float, default=20, help="seconds per step")
    parser.add_argument("--max-ongoing-requests", type=int, default=8,
                        help="the server's limit per replica [default: 8]")
    parser.add_argument("--max-queued-requests", type=int,
                        help="the server's queue limit [default: --max-concurrency]")
    parser.add_argument("--over-factor", type=float, default=2.0,
                        help="the last step runs this many times the server's capacity")
    parser.add_argument("--reject-backoff", type=float, default=0.1,
                        help="seconds a client waits after a 503")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    queued = args.max_queued_requests or args.max_concurrency
    if args.max_concurrency < 1 or args.duration <= 0 or args.max_ongoing_requests < 1 \
            or queued < 1:
        parser.error("--max-concurrency, --duration and the limits must be positive")
    if args.max_concurrency > queued:
        parser.error(f"--max-concurrency {args.max_concurrency} is above --max-queued-requests "
                     f"{queued}: Serve may then reject ramp requests by design")
    capacity = args.max_ongoing_requests + queued
    over = max(capacity + 1, math.ceil(capacity * args.over_factor))

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        run_dir = args.run.resolve() if args.run else make_run(work)
        if not (run_dir / "summary.json").is_file():
            raise SystemExit(f"{run_dir}: not a finished run (no summary.json)")
        task, bodies = task_bodies(run_dir)
        url_path = f"/v1/{task}"
        say(f"starting serve ({args.max_ongoing_requests} ongoing, {queued} queued)")
        started = time.monotonic()
        server = ServeProcess(run_dir, "--max-ongoing-requests", str(args.max_ongoing_requests),
                              "--max-queued-requests", str(queued), log=work / "serve.log")
        startup_s = time.monotonic() - started
        try:
            say(f"healthy after {startup_s:.0f}s at {server.url}; warming up")
            warm = run_step(server.url + url_path, bodies, 1, 3)
            if warm.ok == 0 or warm.errors:
                raise SystemExit(f"warm-up failed: {warm}")
            print(HEADER, flush=True)
            steps: list[Step] = []
            for level in ramp_levels(args.max_concurrency):
                steps.append(run_step(server.url + url_path, bodies, level, args.duration,
                                      reject_backoff=args.reject_backoff))
                print(row("ramp", steps[-1], steps[0].requests_per_s), flush=True)
            above = run_step(server.url + url_path, bodies, over, args.duration,
                             reject_backoff=args.reject_backoff)
            print(row("over", above, steps[0].requests_per_s), flush=True)
            after = run_step(server.url + url_path, bodies, 1, 2)
            healthy = after.ok > 0 and after.errors == 0 and after.rejected == 0
        finally:
            stopped = server.stop()
            say(f"server stopped: exit code {stopped['exit_code']}, "
                f"processes left behind: {stopped['left_behind'] or 'none'}")

    base = steps[0].requests_per_s
    checks = {
        "ramp: no errors and no 503s": all(s.errors == 0 and s.rejected == 0 for s in steps),
        "over: only 200s and 503s": above.errors == 0,
        "over: some 503s and some 200s": above.rejected > 0 and above.ok > 0,
        "over: 503s carry a message": bool(above.reject_sample
                                           and above.reject_sample["body"].strip()),
        "healthy afterwards": healthy,
        "stopped cleanly": stopped["exit_code"] == 0 and not stopped["left_behind"],
    }
    report = {
        "task": task, "endpoint": url_path,
        "run": str(args.run) if args.run else f"temporary: promptsearch run {' '.join(RUN_ARGS)}",
        "server": {"engines": 1, "max_ongoing_requests": args.max_ongoing_requests,
                   "max_queued_requests": queued, "capacity": capacity,
                   "startup_s": round(startup_s, 1)},
        "duration_s": args.duration, "reject_backoff_s": args.reject_backoff,
        "distinct_bodies": len(bodies), "cpus": os.cpu_count(),
        "steps": [{**asdict(s), "vs_concurrency_1": s.requests_per_s / base} for s in steps],
        "over_capacity": {**asdict(above), "vs_concurrency_1": above.requests_per_s / base},
        "after": asdict(after), "stop": stopped, "checks": checks, "pass": all(checks.values()),
    }
    from promptsearch.pipelines.data.writers import write_json

    write_json(args.out, report)
    for name, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
    if above.reject_sample:
        print(f"503 body: {json.dumps(above.reject_sample, ensure_ascii=False)}")
    say(f"wrote {args.out}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
