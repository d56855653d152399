"""The generation cache's store: the old JSONL shards against SQLite (WAL), no Ray, no engine.

For each store: fill it with N entries by put_many batches of 64 (the throughput of a run's
writes, each call committed), then in a fresh process open it (start time, RSS added by the
open) and read 20k random keys by get_many batches of 256. The old store is rebuilt from
git (commit OLD, the last with the JSONL store); ``sqlite-full`` is the new store with
``synchronous=FULL`` for comparison with the chosen ``NORMAL``.

    .venv/bin/python bench/cache_store.py [--entries 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OLD = "eebfb07"
STORES = ("jsonl", "sqlite", "sqlite-full")


def store_class(kind: str) -> Any:
    if kind == "jsonl":
        source = subprocess.check_output(["git", "show", f"{OLD}:pipelines/engine/cache.py"],
                                         cwd=REPO, text=True)
        namespace: dict[str, Any] = {"__name__": "old_cache"}
        exec(compile(source, "old_cache.py", "exec"), namespace)
        return namespace["GenerationCache"]
    from promptsearch.pipelines.engine.cache import GenerationCache

    if kind == "sqlite":
        return GenerationCache

    class Full(GenerationCache):
        def __init__(self, directory: str) -> None:
            super().__init__(directory)
            self._db.execute("PRAGMA synchronous=FULL")

    return Full


def key(i: int) -> str:
    from promptsearch.pipelines.engine.cache import generation_key

    return generation_key({"model": "bench"}, [i, i + 1, i + 2], "{}")


def record(i: int) -> dict[str, Any]:
    return {"text": f"回答{i}: 東京は日本の首都であり、人口は約千四百万人です。" * 2,
            "prompt_tokens": 120, "output_tokens": 40, "finish_reason": "stop"}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(kind: str, step: str, directory: str, entries: int) -> dict[str, float]:
    cls = store_class(kind)
    keys = [key(i) for i in range(entries)]
    if step == "fill":
        cache = cls(directory)
        start = time.perf_counter()
        for lo in range(0, entries, 64):
            cache.put_many([(keys[i], record(i)) for i in range(lo, min(entries, lo + 64))])
        return {"put_per_s": entries / (time.perf_counter() - start)}
    import ray  # noqa: F401  (the telemetry counters import it on first use: not the store's)

    before = rss_mib()
    start = time.perf_counter()
    cache = cls(directory)
    opened = time.perf_counter() - start
    rng = random.Random(0)
    wanted = [keys[rng.randrange(entries)] for _ in range(20_000)]
    start = time.perf_counter()
    for lo in range(0, len(wanted), 256):
        assert all(cache.get_many(wanted[lo:lo + 256]))
    got = len(wanted) / (time.perf_counter() - start)
    return {"start_s": opened, "rss_mib": rss_mib() - before, "get_per_s": got}


def run_child(*args: str) -> dict[str, float]:
    out = subprocess.check_output([sys.executable, __file__, "--child", *args], cwd=REPO,
                                  text=True)
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, step, directory, entries = args.child
        print(json.dumps(child(kind, step, directory, int(entries))))
        return
    n = str(args.entries)
    print(f"{'store':<12} {'start s':>8} {'RSS MiB':>8} {'get/s':>9} {'put/s':>9} {'disk MiB':>9}"
          f"   ({args.entries} entries)")
    for kind in STORES:
        with tempfile.TemporaryDirectory(prefix=f"cache-{kind}-") as tmp:
            fill = run_child(kind, "fill", tmp, n)
            opened = run_child(kind, "open", tmp, n)
            disk = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20
            print(f"{kind:<12} {opened['start_s']:>8.3f} {opened['rss_mib']:>8.1f} "
                  f"{opened['get_per_s']:>9.0f} {fill['put_per_s']:>9.0f} {disk:>9.1f}")


if __name__ == "__main__":
    main()
