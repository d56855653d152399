"""Content-addressed generation cache shared by every trial and every run.

The key is the SHA-256 of everything that can change a generation: the model's identity,
the engine settings that change outputs, the exact prompt token ids, every sampling parameter
(seed included) and the sample index. The cache lives in one Ray actor pinned to the driver's
node and persisted there as append-only JSONL shards, so trials and engines on other nodes need
no shared disk, concurrent trials are serialised by the actor, and a killed run keeps every
generation already flushed.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promptsearch.pipelines import telemetry

Record = dict[str, Any]
"""``text``, ``prompt_tokens``, ``output_tokens``, ``finish_reason``."""


def generation_key(engine_key: dict[str, Any], token_ids: Sequence[int], sampling_key: str,
                   sample_index: int = 0) -> str:
    payload = json.dumps({"engine": engine_key, "prompt": list(token_ids),
                          "sampling": sampling_key, "sample": sample_index}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class GenerationCache:
    """Ray actor body (``ray.remote`` applied by ``start_cache``)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, Record] = {}
        for shard in sorted(self.directory.glob("*.jsonl")):
            self._load(shard)
        name = f"{socket.gethostname()}-{os.getpid()}-{int(time.time() * 1000)}.jsonl"
        self._shard = (self.directory / name).open("a", encoding="utf-8")
        self.hits = 0
        self.misses = 0

    def _load(self, shard: Path) -> None:
        with shard.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                    self.entries[entry.pop("key")] = entry
                except (json.JSONDecodeError, KeyError, AttributeError):
                    continue  # a line cut short by a kill: that generation is simply redone

    def get_many(self, keys: Sequence[str]) -> list[Record | None]:
        found = [self.entries.get(k) for k in keys]
        hits = sum(r is not None for r in found)
        self.hits += hits
        self.misses += len(keys) - hits
        telemetry.CACHE_HITS.inc(hits)
        telemetry.CACHE_MISSES.inc(len(keys) - hits)
        return found

    def put_many(self, items: Sequence[tuple[str, Record]]) -> None:
        for key, record in items:
            if key in self.entries:
                continue
            self.entries[key] = record
            self._shard.write(json.dumps({"key": key, **record}, ensure_ascii=False) + "\n")
        self._shard.flush()
        os.fsync(self._shard.fileno())

    def stats(self) -> dict[str, int]:
        return {"entries": len(self.entries), "hits": self.hits, "misses": self.misses}

    def __repr__(self) -> str:
        return f"GenerationCache({self.directory})"  # Ray's log prefix and dashboard "repr"


def start_cache(directory: str | Path) -> Any:
    """The cache actor, on this (the driver's) node, whose disk holds the shards."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(GenerationCache).options(
        name=telemetry.actor_name("generation-cache"), num_cpus=0, max_concurrency=1,
        max_restarts=-1, max_task_retries=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
    ).remote(str(directory))
    ray.get(actor.stats.remote())
    return actor
