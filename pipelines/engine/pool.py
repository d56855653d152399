"""``EnginePool``: N vLLM engines in Ray actors, created once per run and shared by handle."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from promptsearch.pipelines.engine.actor import EngineActor, EngineConfig, Generation
from promptsearch.pipelines.engine.cache import generation_key
from promptsearch.pipelines.engine.models import (
    DEFAULT_MODEL,
    cache_dir,
    model_fingerprint,
    portable_model,
    resolve_model,
    resolve_on_node,
)
from promptsearch.pipelines.engine.sampling import Sampling
from promptsearch.pipelines.engine.telemetry import actor_name
from promptsearch.pipelines.engine.tokenizer import prompt_tokenizer
from promptsearch.pipelines.errors import UserError, last_line

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
Request = str | Messages
"""A plain prompt, or chat messages rendered with the model's chat template."""
Progress = Callable[[int, int], None]
"""Called with (rows finished, output tokens) after each chunk. If it has a ``label`` (as
``search.progress.ProgressLine`` does), the engine calls show it in the Ray dashboard."""


class EngineStartError(UserError):
    """An engine could not start (bad model, out of memory): the run stops early and says why."""


ENGINE_RESOURCES_ENV = "PROMPTSEARCH_ENGINE_RESOURCES"
"""Custom Ray resources each engine asks for, as JSON (``{"worker_node": 1}``): places the
engines on the nodes started with that resource (``ray start --resources``)."""


def engine_resources_from_env() -> dict[str, float]:
    """``PROMPTSEARCH_ENGINE_RESOURCES``, checked: a JSON object of positive amounts."""
    import json
    import math
    import os

    text = os.environ.get(ENGINE_RESOURCES_ENV, "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not (isinstance(value, dict) and value and all(
            isinstance(k, str) and k and isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v) and v > 0 for k, v in value.items())):
        raise UserError(f"{ENGINE_RESOURCES_ENV}: expected a JSON object of custom Ray resources "
                        f"per engine with positive amounts, such as '{{\"worker_node\": 1}}', "
                        f"got {text[:100]!r}")
    reserved = sorted(set(value) & {"CPU", "GPU", "memory", "object_store_memory"})
    if reserved:
        raise UserError(f"{ENGINE_RESOURCES_ENV}: {', '.join(reserved)} are set by --engines, "
                        "--cpus-per-engine and --tensor-parallel-size; name custom resources only")
    return {k: float(v) for k, v in value.items()}


@dataclass
class _Item:
    index: int
    ids: list[int]
    sampling: Sampling
    key: str = ""

    @property
    def cost(self) -> int:
        return len(self.ids) + self.sampling.max_tokens


class EnginePool:
    """N engines, one per GPU (or tensor-parallel group) or per block of CPU cores.

    ``engines=None`` starts as many as the cluster's GPUs (or CPU cores) allow.

    Created once by the driver; pass the object itself to trials and tasks (it pickles to its
    actor handles). Requests are chunked by token budget and pulled by engines as they free up,
    so work spreads by actual load rather than by position. Results come back in input order.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        engines: int | None = None,
        device: str = "auto",
        cpus_per_engine: int = 1,
        tensor_parallel_size: int = 1,
        max_model_len: int = 4096,
        dtype: str = "auto",
        kv_cache_gib: int = 1,
        gpu_memory_utilization: float = 0.85,
        start_timeout: float = 900.0,
        chunk_tokens: int = 8192,
        chunks_in_flight: int = 4,
        cache: bool | str | Path = False,
        resources: dict[str, float] | None = None,
    ) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("EnginePool needs Ray: call ray.init() in the entry point first")
        cluster = ray.cluster_resources()
        if device == "auto":
            device = "gpu" if cluster.get("GPU", 0) > 0 else "cpu"
        if engines is None:  # as many as the cluster holds
            per_engine = cpus_per_engine if device == "cpu" else tensor_parallel_size
            engines = max(1, int(cluster.get(device.upper(), 1) // per_engine))
        if engines < 1:
            raise UserError(f"--engines must be >= 1, got {engines}")
        self.model_name = model
        resolved = resolve_model(model)
        self._local_model = resolved  # the driver's copy, for its tokenizer
        self.resources = engine_resources_from_env() if resources is None else dict(resources)
        self.config = EngineConfig(
            model=portable_model(model, resolved), model_id=model_fingerprint(model, resolved),
            model_name=_short_name(model), device=device,
            max_model_len=max_model_len,
            dtype=dtype, tensor_parallel_size=tensor_parallel_size,
            cpus_per_engine=cpus_per_engine, kv_cache_gib=kv_cache_gib,
            gpu_memory_utilization=gpu_memory_utilization)
        self.chunk_tokens = chunk_tokens
        self.chunks_in_flight = chunks_in_flight
        self._tokenizer: Any = None
        self._placement_groups: list[Any] = []
        self._actors: list[Any] = []
        self._owns_engines = True
        self._check_resources(engines)
        self._cache: Any = _start_cache(cache)
        try:
            for i in range(engines):
                self._actors.append(self._create_actor(i))
            ray.get([a.info.options(max_task_retries=0).remote() for a in self._actors],
                    timeout=start_timeout)
        except BaseException as exc:  # Ctrl-C during the start too: no engine left behind
            self.shutdown()
            if not isinstance(exc, Exception):
                raise
            raise EngineStartError(_start_error_message(self.config.model, exc)) from None

    # -- construction ---------------------------------------------------------------------
    def _check_resources(self, engines: int) -> None:
        import ray

        total = ray.cluster_resources()
        cfg = self.config
        if cfg.device == "cpu":
            need, have, what = engines * cfg.cpus_per_engine, total.get("CPU", 0), "CPU cores"
        else:
            need, have, what = engines * cfg.tensor_parallel_size, total.get("GPU", 0), "GPUs"
        if need > have:
            raise EngineStartError(f"--engines {engines} needs {need:g} {what} but the Ray "
                                   f"cluster has {have:g}; lower --engines or add nodes")
        for resource, amount in self.resources.items():
            need, have = engines * amount, total.get(resource, 0)
            if need > have:
                raise EngineStartError(
                    f"--engines {engines} needs {need:g} of the resource {resource!r} "
                    f"({ENGINE_RESOURCES_ENV}) but the Ray cluster has {have:g}; start nodes "
                    f"with ray start --resources '{{\"{resource}\": ...}}' or lower --engines")

    def _create_actor(self, index: int) -> Any:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        cfg = self.config
        options: dict[str, Any] = {"max_restarts": 2, "max_task_retries": 2,
                                   "max_concurrency": 1000}
        if cfg.device == "cpu":
            options["num_cpus"] = cfg.cpus_per_engine
        elif cfg.tensor_parallel_size == 1:
            options["num_gpus"] = 1
        if cfg.device == "cpu" or cfg.tensor_parallel_size == 1:
            if self.resources:
                options["resources"] = dict(self.resources)
        else:
            share = {k: v / cfg.tensor_parallel_size for k, v in self.resources.items()}
            pg = placement_group([{"GPU": 1, "CPU": 1, **share}] * cfg.tensor_parallel_size,
                                 strategy="STRICT_PACK", name=f"promptsearch-engine-{index}")
            self._placement_groups.append(pg)
            options["num_cpus"] = 0
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                pg, placement_group_capture_child_tasks=True)
        name = actor_name(f"engine-{index}:{cfg.model_name}")
        actor_cls = ray.remote(EngineActor)
        return actor_cls.options(name=name, **options).remote(cfg, name)

    # -- state across processes -----------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tokenizer"] = None  # reloaded lazily where needed; too big to ship per trial
        return state

    @property
    def engines(self) -> int:
        return len(self._actors)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = prompt_tokenizer(self._tokenizer_source())
        return self._tokenizer

    def _tokenizer_source(self) -> str:
        """The driver's copy of the model where this process can see it (the driver, trials
        pinned to its node), else this node's own (a serve replica on another node)."""
        local = getattr(self, "_local_model", self.config.model)
        if local == self.config.model or Path(local).is_dir():
            return local
        return resolve_on_node(self.config.model, self.config.model_id)

    @property
    def has_chat_template(self) -> bool:
        return getattr(self.tokenizer, "chat_template", None) is not None

    def load_counts(self) -> list[int]:
        """How many times each engine has loaded its model in this run (1 when healthy).

        Read from Ray's record of actor restarts: a restarted engine loads its model again
        in a fresh process, which cannot remember the loads of the process it replaces. The
        record is read from the GCS itself, because the public state API needs the dashboard,
        which not every cluster runs."""
        from ray._private.state import actors

        return [1 + actors(actor_id=a._actor_id.hex())["NumRestarts"] for a in self._actors]

    def engine_stats(self, reset: bool = False) -> list[Any]:
        """Each engine's ``EngineStats`` (requests, tokens, busy time, peak in flight)."""
        import ray

        return ray.get([a.stats.remote(reset) for a in self._actors])

    def engine_info(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([a.info.remote() for a in self._actors])

    async def health_async(self, *, timeout: float) -> list[bool]:
        """Whether each engine is up: its actor answers within ``timeout`` and its vLLM
        engine process is alive. An engine being restarted (after its vLLM process died, see
        ``EngineActor.healthy``) is down until its model is loaded again."""

        async def up(actor: Any) -> bool:
            try:
                return bool(await asyncio.wait_for(
                    actor.healthy.options(max_task_retries=0).remote(), timeout))
            except Exception:  # timed out, restarting, or dead for good
                return False

        return list(await asyncio.gather(*(up(a) for a in self._actors)))

    # -- generation -----------------------------------------------------------------------
    def tokenize(self, request: Request) -> list[int]:
        """Token ids the engine will see: the chat template applied for messages, BOS as the
        tokenizer adds it for plain prompts."""
        if not isinstance(request, str) and not self.has_chat_template:
            raise ValueError(f"model {self.model_name} has no chat template; send plain prompts")
        return prompt_token_ids(self.tokenizer, [request])[0]

    def generate(
        self,
        requests: Sequence[Request],
        sampling: Sampling | Sequence[Sampling] | None = None,
        *,
        progress: Progress | None = None,
    ) -> list[Generation]:
        """Generate for every request; ``sampling`` applies to all, or a list gives one each."""
        coro = self.generate_async(requests, sampling, progress=progress)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        with concurrent.futures.ThreadPoolExecutor(1) as ex:  # called from inside a loop
            return ex.submit(asyncio.run, coro).result()

    async def generate_async(
        self,
        requests: Sequence[Request],
        sampling: Sampling | Sequence[Sampling] | None = None,
        *,
        progress: Progress | None = None,
    ) -> list[Generation]:
        samplings = _per_request(sampling, len(requests))
        results: list[Generation | None] = [None] * len(requests)
        items: list[_Item] = []
        for i, (request, s) in enumerate(zip(requests, samplings, strict=True)):
            try:
                ids = self.tokenize(request)
            except Exception as exc:
                results[i] = _failed(0, f"cannot render request: {exc}")
                continue
            if len(ids) >= self.config.max_model_len:
                results[i] = _failed(len(ids), (
                    f"prompt has {len(ids)} tokens, the context is "
                    f"{self.config.max_model_len}; shorten it or raise max_model_len"))
                continue
            key = (generation_key(self.config.output_key(), ids, s.key()) if s.reproducible
                   else f"once:{i}")
            items.append(_Item(i, ids, s, key))
        todo = await self._from_cache(items, results)
        queue: asyncio.Queue[list[_Item]] = asyncio.Queue()
        for chunk in _chunks(todo, self._chunk_budget(todo)):
            queue.put_nowait(chunk)
        done = [len(items) - len(todo), 0]
        label = getattr(progress, "label", None)
        call = {"name": f"generate[{label}]"} if label else {}
        if progress is not None and done[0]:
            progress(done[0], 0)  # cached rows: reported even when no engine call follows

        async def worker(actor: Any) -> None:
            while not queue.empty():
                chunk = queue.get_nowait()
                try:
                    gens = await actor.generate.options(**call).remote(
                        [(it.ids, it.sampling) for it in chunk])
                except Exception as exc:  # the engine died for good: fail these rows only
                    gens = [_failed(len(it.ids), f"engine failed: {exc}") for it in chunk]
                for it, gen in zip(chunk, gens, strict=True):
                    results[it.index] = gen
                if self._cache is not None:
                    await self._cache.put_many.remote(
                        [(it.key, _record(g)) for it, g in zip(chunk, gens, strict=True)
                         if g.ok and it.sampling.reproducible])
                done[0] += len(chunk)
                done[1] += sum(g.output_tokens for g in gens)
                if progress is not None:
                    progress(done[0], done[1])

        # interleaved, so that a call of only a few chunks still spreads over the engines
        await asyncio.gather(*(worker(a) for _ in range(self.chunks_in_flight)
                               for a in self._actors))
        first: dict[str, int] = {}
        for item in items:  # duplicates within this call share the first one's generation
            first.setdefault(item.key, item.index)
            if results[item.index] is None:
                results[item.index] = replace(results[first[item.key]], cached=True)
        return [r for r in results if r is not None]

    async def _from_cache(self, items: list[_Item],
                          results: list[Generation | None]) -> list[_Item]:
        """Fill cached rows; return the rows to generate, each distinct prompt once."""
        seen: set[str] = set()
        unique = [it for it in items if not (it.key in seen or seen.add(it.key))]
        if self._cache is None:
            return unique
        cacheable = [it for it in unique if it.sampling.reproducible]
        records = await self._cache.get_many.remote([it.key for it in cacheable])
        for item, record in zip(cacheable, records, strict=True):
            if record is not None:
                results[item.index] = Generation(**record, seconds=0.0, cached=True)
        return [it for it in unique if results[it.index] is None]

    def _chunk_budget(self, items: Sequence[_Item]) -> int:
        """Tokens per chunk: at most ``chunk_tokens``, and small enough that every engine
        gets ``chunks_in_flight`` chunks, so a mid-sized call still uses every engine."""
        total = sum(it.cost for it in items)
        return max(1, min(self.chunk_tokens,
                          -(-total // (self.engines * self.chunks_in_flight))))

    def with_cache(self, cache: bool | str | Path, *,
                   max_model_len: int | None = None) -> EnginePool:
        """The same engines behind another generation cache (``True``: the default directory,
        read now; ``False``: none), optionally checking prompts against a shorter context
        than the engines have. Shutting the view down stops only its cache: one pool serves
        many commands in one process (the test suite's session pool)."""
        if max_model_len is not None and max_model_len > self.config.max_model_len:
            raise ValueError(f"max_model_len {max_model_len} exceeds the engines' "
                             f"{self.config.max_model_len}")
        view = copy.copy(self)
        if max_model_len is not None:
            view.config = replace(self.config, max_model_len=max_model_len)
        view._cache = _start_cache(cache)
        view._owns_engines = False
        view._placement_groups = []
        return view

    def cache_stats(self) -> dict[str, int]:
        import ray

        return ray.get(self._cache.stats.remote()) if self._cache is not None else {}

    # -- teardown -------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop every engine and free its placement group; safe to call twice."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self._actors if self._owns_engines else []:
            with contextlib.suppress(Exception):
                ray.get(actor.shutdown.options(max_task_retries=0).remote(), timeout=30)
            ray.kill(actor, no_restart=True)
        self._actors = []
        if self._cache is not None:
            ray.kill(self._cache, no_restart=True)
            self._cache = None
        for pg in self._placement_groups:
            remove_placement_group(pg)
        self._placement_groups = []

    def __enter__(self) -> EnginePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _start_cache(cache: bool | str | Path) -> Any:
    if not cache:
        return None
    from promptsearch.pipelines.engine.cache import start_cache

    return start_cache(cache_dir() / "generations" if cache is True else Path(cache))


def _short_name(model: str) -> str:
    """An embedded name or hub id as given; a local directory by its last part."""
    path = Path(model)
    return path.name if path.is_dir() else model


def prompt_token_ids(tokenizer: Any, requests: Sequence[Request]) -> list[list[int]]:
    """Token ids the engine sees for each request, in one batched call per kind: plain
    prompts with the tokenizer's special tokens (BOS), chat messages through the chat
    template (which writes its own)."""
    texts = [r if isinstance(r, str) else
             tokenizer.apply_chat_template(r, tokenize=False, add_generation_prompt=True)
             for r in requests]
    ids: list[list[int]] = [[] for _ in texts]
    for plain in (True, False):
        idx = [i for i, r in enumerate(requests) if isinstance(r, str) is plain]
        if idx:
            rows = tokenizer([texts[i] for i in idx], add_special_tokens=plain).input_ids
            for i, row in zip(idx, rows, strict=True):
                ids[i] = list(row)
    return ids


def _per_request(sampling: Sampling | Sequence[Sampling] | None, n: int) -> list[Sampling]:
    if sampling is None:
        return [Sampling()] * n
    if isinstance(sampling, Sampling):
        return [sampling] * n
    if len(sampling) != n:
        raise ValueError(f"got {len(sampling)} sampling settings for {n} requests")
    return list(sampling)


def _chunks(items: list[_Item], budget: int) -> list[list[_Item]]:
    """Consecutive items grouped up to ``budget`` tokens (prompt + max output) each."""
    chunks: list[list[_Item]] = []
    current: list[_Item] = []
    used = 0
    for item in items:
        if current and used + item.cost > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(item)
        used += item.cost
    if current:
        chunks.append(current)
    return chunks


def _record(gen: Generation) -> dict[str, Any]:
    return {"text": gen.text, "prompt_tokens": gen.prompt_tokens,
            "output_tokens": gen.output_tokens, "finish_reason": gen.finish_reason}


def _failed(prompt_tokens: int, error: str) -> Generation:
    return Generation("", prompt_tokens, 0, "error", 0.0, error=error)


def _start_error_message(model: str, exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "GetTimeoutError":
        return f"engine for model {model} failed to start: timed out waiting for it"
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc):
        return (f"engine for model {model} failed to start: the node ran out of memory (Ray's "
                f"memory monitor killed it); start fewer engines (--engines) or stop other jobs")
    # a UserError raised on the engine's node (its model there) is the message itself
    return f"engine for model {model} failed to start: " \
           f"{last_line(exc).removeprefix('UserError: ')}"


__all__ = ["EnginePool", "EngineStartError", "Generation", "Request"]
