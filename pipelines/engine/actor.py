"""One vLLM engine inside one Ray actor.

The actor owns an ``AsyncLLM`` so that concurrent callers (trials, serve replicas) share vLLM's
continuous batching. It receives token ids (the pool renders and tokenises), so prompt token
counts are exact and context-length problems are caught per row before reaching vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from promptsearch.pipelines.engine import telemetry
from promptsearch.pipelines.engine.models import resolve_on_node
from promptsearch.pipelines.engine.sampling import Sampling

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Everything needed to start one engine; identical for every engine of a pool."""

    model: str
    """The model as the driver names it to every node (``portable_model``): an embedded
    model's name, a local directory's absolute path or a hub id. Each engine resolves it on
    its own node (``resolve_on_node``), so no node depends on the driver's disk."""
    device: str = "cpu"
    """``cpu`` or ``gpu``."""
    max_model_len: int = 4096
    """Context length in tokens (prompt + output)."""
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    cpus_per_engine: int = 1
    """CPU cores per engine on CPU machines; vLLM's OpenMP threads are bound to exactly these."""
    kv_cache_gib: int = 1
    """KV-cache size on CPU (``VLLM_CPU_KVCACHE_SPACE``). 1 GiB holds about 58k tokens of
    gemma-3-270m; an engine then takes about 5 GB of RAM in all. Raise it for larger models."""
    gpu_memory_utilization: float = 0.85
    enforce_eager: bool | None = None
    """Skip graph capture; defaults to True on CPU, where it cuts start-up from ~2 min to ~40 s."""
    seed: int = 0
    batch_invariant: bool | None = None
    """vLLM's batch-invariant kernels (``VLLM_BATCH_INVARIANT``), so a row's greedy output
    does not depend on which rows share its batch. Default: on GPUs, where vLLM implements
    it; vLLM has no such kernels for CPUs, where the generation cache keeps a run, its
    ``eval`` and ``serve`` identical instead."""
    model_id: str = ""
    """Machine-independent identity of the weights (``model_fingerprint``)."""
    model_name: str = ""
    """Short name in metrics and the Ray dashboard (vLLM's served model name); no effect on
    outputs."""

    def output_key(self) -> dict[str, Any]:
        """The settings that can change generated text, for content-addressed caching."""
        return {"model": self.model_id or self.model, "dtype": self.dtype,
                "max_model_len": self.max_model_len, "seed": self.seed,
                "device": self.device, "tensor_parallel_size": self.tensor_parallel_size,
                "enforce_eager": self.enforce_eager, "cpus_per_engine": self.cpus_per_engine,
                "vllm": vllm_version(), "batch_invariant": self.invariant}

    @property
    def invariant(self) -> bool:
        return self.device != "cpu" if self.batch_invariant is None else self.batch_invariant


@dataclass(frozen=True)
class Generation:
    """The result of one request, in the caller's order."""

    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str | None
    """``stop``, ``length`` or ``error``."""
    seconds: float
    """Wall time from submission to the last token."""
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@functools.lru_cache(maxsize=1)
def vllm_version() -> str:
    """The installed vLLM build (GPU ``vllm`` or ``vllm-cpu``), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist}=={version(dist)}"
        except PackageNotFoundError:
            continue
    return "unknown"


@dataclass
class EngineStats:
    """How much work one engine did, and how full it was kept."""

    requests: int = 0
    output_tokens: int = 0
    busy_seconds: float = 0.0
    """Wall time with at least one request in flight."""
    peak_in_flight: int = 0
    """Most requests in flight at once: the largest batch vLLM could form."""


def _claim_cores(n: int) -> tuple[list[int], IO[str] | None]:
    """Take the first free block of ``n`` cores on this node, held by an flock.

    Ray schedules by core count but does not pin actors, so two engines would otherwise bind
    vLLM's threads to the same cores. The lock dies with the process, so a restarted actor
    reclaims its block.

    The locks live in a directory of this user's own (``$XDG_RUNTIME_DIR`` or the temporary
    directory, ``promptsearch-cores-<uid>``, mode 0700): in a directory shared by all users,
    anyone could hold every lock or plant a symlink where a lock file is written. A symlink
    or a directory owned by someone else is refused (cores are then shared, with a warning).
    """
    import stat

    available = sorted(os.sched_getaffinity(0))
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    base = Path(runtime) if runtime and Path(runtime).is_dir() else Path(tempfile.gettempdir())
    lockdir = base / f"promptsearch-cores-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        lockdir.mkdir(mode=0o700)
    info = os.lstat(lockdir)
    blocks_to_try = range(0, len(available) - n + 1, n)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        what = ("a symlink" if stat.S_ISLNK(info.st_mode) else "not a directory"
                if not stat.S_ISDIR(info.st_mode) else f"owned by uid {info.st_uid}")
        log.warning("core lock directory %s is %s; not using it (remove it)", lockdir, what)
        blocks_to_try = range(0)
    elif stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(lockdir, 0o700)
    for start in blocks_to_try:
        cores = available[start:start + n]
        fd = os.open(lockdir / f"cores-{cores[0]}-{cores[-1]}.lock",
                     os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        handle = os.fdopen(fd, "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return cores, handle
    log.warning("no free block of %d cores; this engine shares cores with another", n)
    blocks = max(1, len(available) // n)
    start = (os.getpid() % blocks) * n  # spread sharers instead of piling them on core 0
    return available[start:start + n], None


class EngineDied(RuntimeError):
    """The vLLM engine process inside an ``EngineActor`` died; the actor is restarting."""


class EngineActor:
    """Ray actor body (wrapped with ``ray.remote`` by ``EnginePool``).

    ``name`` is the actor's name in the Ray dashboard and the ``engine`` tag of its metrics.
    """

    def __init__(self, config: EngineConfig, name: str = "engine") -> None:
        self.config = config
        self.name = name
        self.requests = 0
        self._tags = {"engine": name, "model": config.model_name or config.model}
        self._depth = {"waiting": 0, "running": 0}
        self._stats = EngineStats()
        self._busy_since = 0.0
        self._core_lock: IO[str] | None = None
        self.cores: list[int] = []
        if config.device == "cpu":
            self.cores, self._core_lock = _claim_cores(config.cpus_per_engine)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = (
                f"{self.cores[0]}-{self.cores[-1]}" if len(self.cores) > 1 else str(self.cores[0]))
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
        if config.invariant:
            os.environ["VLLM_BATCH_INVARIANT"] = "1"
        self.model_path = resolve_on_node(config.model, config.model_id)
        self.engine = self._start_engine()
        self._stopping = False
        threading.Thread(target=self._exit_when_engine_dies, name="engine-watchdog",
                         daemon=True).start()

    def __repr__(self) -> str:
        return self.name  # Ray's log prefix and the dashboard's "repr" column

    def _start_engine(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        cfg = self.config
        eager = cfg.enforce_eager if cfg.enforce_eager is not None else cfg.device == "cpu"
        args = AsyncEngineArgs(
            model=self.model_path,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size,
            enforce_eager=eager,
            enable_prefix_caching=True,
            seed=cfg.seed,
            distributed_executor_backend="uni" if cfg.tensor_parallel_size == 1 else "ray",
            served_model_name=cfg.model_name or None,
            disable_log_stats=False,  # vLLM's engine metrics, exported below
            **({} if cfg.device == "cpu" else
               {"gpu_memory_utilization": cfg.gpu_memory_utilization}),
        )
        return AsyncLLM.from_engine_args(args, stat_loggers=_vllm_stat_loggers())

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "pid": os.getpid(), "cores": self.cores,
                "requests": self.requests, "model_path": self.model_path}

    def stats(self, reset: bool = False) -> EngineStats:
        """Counters since the start (or the last reset): how full the engine was kept."""
        stats = replace(self._stats, busy_seconds=self._stats.busy_seconds + (
            time.perf_counter() - self._busy_since if self._in_flight() else 0.0))
        if reset:
            self._stats = EngineStats()
            self._busy_since = time.perf_counter()
        return stats

    def _in_flight(self) -> int:
        return self._depth["waiting"] + self._depth["running"]

    async def generate(self, batch: list[tuple[list[int], Sampling]]) -> list[Generation]:
        """Generate every (token ids, sampling) pair concurrently; errors stay per row, except
        a dead vLLM engine process, which fails the whole call (``EngineDied``)."""
        self.requests += len(batch)
        gens = list(await asyncio.gather(*(self._one(ids, s) for ids, s in batch)))
        if self.engine.errored:
            raise EngineDied(f"{self.name}: the vLLM engine process died; the engine restarts")
        self._record(gens)
        return gens

    def healthy(self) -> bool:
        """False once the vLLM engine process has died (this actor then exits, to be
        restarted by Ray with a fresh engine)."""
        return not self.engine.errored

    def _exit_when_engine_dies(self) -> None:
        """Watchdog thread: vLLM notices at once when its engine process dies, but never
        starts a new one, so this actor would answer errors for ever. Exit instead, after a
        moment for the calls in flight to fail cleanly: Ray restarts the actor (its
        ``max_restarts``), which loads the model again."""
        while not self._stopping:
            if self.engine.errored:
                log.error("%s: the vLLM engine process died; restarting this engine", self.name)
                time.sleep(1.0)
                if not self._stopping:
                    os._exit(1)
            time.sleep(0.5)

    async def _one(self, ids: list[int], sampling: Sampling) -> Generation:
        start = time.perf_counter()
        state = self._enter("waiting")
        try:
            final = None
            async for out in self.engine.generate(
                    {"prompt_token_ids": ids}, sampling.to_vllm(), request_id=uuid.uuid4().hex):
                if final is None:
                    state = self._enter("running", state)
                final = out
            assert final is not None
            completion = final.outputs[0]
            return Generation(completion.text, len(ids), len(completion.token_ids),
                              completion.finish_reason, time.perf_counter() - start)
        except Exception as exc:  # one bad request must not fail the batch
            return Generation("", len(ids), 0, "error", time.perf_counter() - start,
                              error=f"{type(exc).__name__}: {exc}")
        finally:
            self._enter(None, state)

    def _enter(self, state: str | None, previous: str | None = None) -> str | None:
        """Move one request between queue states; export the engine's queue depth and keep
        its busy time and peak of requests in flight."""
        before = self._in_flight()
        for changed, step in ((previous, -1), (state, 1)):
            if changed is not None:
                self._depth[changed] += step
                telemetry.QUEUE_DEPTH.set(self._depth[changed], state=changed, **self._tags)
        now, after = time.perf_counter(), self._in_flight()
        if before == 0 and after > 0:
            self._busy_since = now
        elif before > 0 and after == 0:
            self._stats.busy_seconds += now - self._busy_since
        self._stats.peak_in_flight = max(self._stats.peak_in_flight, after)
        return state

    def _record(self, gens: list[Generation]) -> None:
        self._stats.requests += len(gens)
        self._stats.output_tokens += sum(g.output_tokens for g in gens)
        ok = sum(g.ok for g in gens)
        telemetry.REQUESTS.inc(ok, status="ok", **self._tags)
        telemetry.REQUESTS.inc(len(gens) - ok, status="error", **self._tags)
        telemetry.PROMPT_TOKENS.inc(sum(g.prompt_tokens for g in gens), **self._tags)
        telemetry.GENERATED_TOKENS.inc(sum(g.output_tokens for g in gens), **self._tags)
        for g in gens:
            telemetry.REQUEST_SECONDS.observe(g.seconds, **self._tags)

    def shutdown(self) -> None:
        self._stopping = True
        with contextlib.suppress(Exception):
            self.engine.shutdown()
        if self._core_lock is not None:
            self._core_lock.close()


def _vllm_stat_loggers() -> list[Any] | None:
    """vLLM's Prometheus metrics recorded through Ray, so each node's metrics agent exports
    them (as ``ray_vllm_...``); without this they stay in the actor's own registry."""
    try:
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger
    except ImportError as exc:
        log.warning("vLLM engine metrics are not exported: %s", exc)
        return None
    return [RayPrometheusStatLogger]
