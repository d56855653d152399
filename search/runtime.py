"""Entry-point plumbing shared by the commands: Ray start-up, the engine pool, options, the
model's tokenizer checked before any engine starts."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import click

from promptsearch.pipelines.engine.models import DEFAULT_MODEL
from promptsearch.pipelines.errors import UserError

log = logging.getLogger("promptsearch")


def init_ray(*, verbose: bool = False) -> None:
    """Join the cluster in ``RAY_ADDRESS`` (set by ``ray job submit``), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    quiet_ray_start()
    ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.WARNING)


def quiet_ray_start() -> None:
    """What keeps a local Ray start's warnings off the terminal; for whatever calls
    ``ray.init`` itself (the benchmarks) too."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # A search holds a process per trial beside the engines (trials wait, they take no CPU):
    # Ray's raylet warns on the terminal from 4x this many (default: the CPU count) onwards.
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", "32")
    # Ray enables token auth for a local cluster and says so at every start; keep it on, quietly.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)


def engine_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that generates takes, with the same names everywhere."""
    options = [
        click.option("--model", default=DEFAULT_MODEL, show_default=True,
                     help="Embedded model name, local Hugging Face model directory, or hub id."),
        click.option("--engines", type=click.IntRange(1), envvar="PROMPTSEARCH_ENGINES",
                     help="Engine actors: one per GPU or tensor-parallel group, or per "
                          "--cpus-per-engine cores (or set PROMPTSEARCH_ENGINES) "
                          "[default: as many as the cluster holds]."),
        click.option("--cpus-per-engine", default=1, show_default=True, type=click.IntRange(1),
                     help="CPU cores per engine on CPU machines."),
        click.option("--tensor-parallel-size", default=1, show_default=True,
                     type=click.IntRange(1), help="GPUs per engine."),
        click.option("--max-model-len", default=4096, show_default=True,
                     type=click.IntRange(16), help="Context length in tokens."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@dataclass(frozen=True)
class EngineOptions:
    """What ``engine_options`` reads: the model and the engines to run it on."""

    model: str = DEFAULT_MODEL
    engines: int | None = None
    """Engine actors; None: as many as the cluster holds."""
    cpus_per_engine: int = 1
    tensor_parallel_size: int = 1
    max_model_len: int = 4096


_shared_pool: Any = None


@contextlib.contextmanager
def shared_engines(pool: Any) -> Iterator[None]:
    """Every command run in this process while the block is open uses ``pool``'s engines
    (when it asks for the same model) instead of starting its own: how the test suite keeps
    one engine pool for the whole session while calling the CLI in-process."""
    global _shared_pool
    previous, _shared_pool = _shared_pool, pool
    try:
        yield
    finally:
        _shared_pool = previous


@contextlib.contextmanager
def engine_pool(model: str, engines: int | None, cpus_per_engine: int, tensor_parallel_size: int,
                max_model_len: int, *, verbose: bool = False,
                cache: bool = False) -> Iterator[Any]:
    """Start Ray and the pool; always shut the engines down, Ctrl-C included. ``cache``:
    use the generation cache under ``PROMPTSEARCH_CACHE``."""
    from promptsearch.pipelines.engine.models import resolve_model
    from promptsearch.pipelines.engine.pool import EnginePool

    resolve_model(model)  # a bad --model fails here, before Ray starts
    init_ray(verbose=verbose)
    if _shared_pool is not None and _shared_pool.model_name == model \
            and _shared_pool.config.max_model_len >= max_model_len:
        pool = _shared_pool.with_cache(cache, max_model_len=max_model_len)
    else:
        log.info("starting engines for %s", model)
        pool = EnginePool(model, engines=engines, cpus_per_engine=cpus_per_engine,
                          tensor_parallel_size=tensor_parallel_size,
                          max_model_len=max_model_len, cache=cache)
    try:
        yield pool
    finally:
        pool.shutdown()


def load_tokenizer(model: str) -> Any:
    """``--model``'s tokenizer on the driver, to check it and size prompts before any engine
    starts (the pool reuses it: same resolved path, same process cache)."""
    from promptsearch.pipelines.engine.models import resolve_model
    from promptsearch.pipelines.engine.tokenizer import prompt_tokenizer
    from promptsearch.pipelines.errors import one_line

    resolved = resolve_model(model)
    try:
        return prompt_tokenizer(resolved)
    except Exception as exc:
        raise UserError(f"--model {model}: cannot load its tokenizer ({one_line(exc)}); point "
                        "it at a Hugging Face model directory with tokenizer files") from None


def count_tokens(tokenizer: Any, requests: Sequence[Any]) -> list[int]:
    """Prompt tokens as the engine will see them."""
    from promptsearch.pipelines.engine.pool import prompt_token_ids

    return [len(ids) for ids in prompt_token_ids(tokenizer, requests)]
