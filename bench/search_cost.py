"""What the search saves: early stopping + the generation cache vs evaluating every
configuration fully.

On JSQuAD (../shared) with the default model, one run:
  (a) a fixed sample of 16 configurations (the baseline first), each on the full validation
      split, no cache;
  (b) the search (Tune + Optuna, the default scheduler: synchronous successive halving over
      validation chunks, with a fresh cache) over the same 16;
  (b-asha) the same with ASHA (``--scheduler asha``) and its own fresh cache;
  (c) an identical re-run of (b) on the warm cache.
Targets: (b) spends at most 40% of (a)'s generations and finds a configuration within 1 point
of (a)'s best; (c) has a cache hit rate >= 99% and takes at most 20% of (b)'s time.

    .venv/bin/python bench/search_cost.py [--validation 128] [--chunks 8] [--engines 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
JSQUAD = REPO.parent / "shared/data/jsquad/valid-v1.3.json"
SPACE = {
    "templates": ["jglue-extract", "plain", "alpaca", "qa-label"],
    "fewshot": {"k": [0, 1, 2, 4], "selector": ["first", "similar"], "order": ["as_selected"]},
    "sampling": {"temperature": [0.0], "max_tokens": [32, 6], "repetition_penalty": [1.0],
                 "stop": {"newline": ["\n"]}},
    "parse": {"extract": ["strip_prefix", "first_line", "until_period"],
              "line": ["first_line"]},
}


def sample_candidates(task: Any, space: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """The baseline, then distinct configurations drawn uniformly from the space."""
    import optuna

    from promptsearch.pipelines.prompting.config import PromptConfig

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    found = [space.params_of(PromptConfig.baseline(task))]
    while len(found) < n:
        trial = study.ask()
        space.suggest(trial)
        study.tell(trial, 0.0)
        if trial.params not in found:
            found.append(dict(trial.params))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validation", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--engines", type=int, default=None)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reduction-factor", type=int, default=None,
                        help="the schedulers' eta [default: PromptSearch's]")
    parser.add_argument("--jsquad", type=Path, default=JSQUAD)
    args = parser.parse_args()

    import ray
    import yaml

    from promptsearch.pipelines.data.taskdata import load_task_data
    from promptsearch.pipelines.engine.pool import EnginePool
    from promptsearch.pipelines.evaluate import evaluate
    from promptsearch.pipelines.prompting.prompts import demo_pool
    from promptsearch.pipelines.tasks import load_task
    from promptsearch.search.driver import PromptSearch
    from promptsearch.search.runtime import quiet_ray_start
    from promptsearch.search.space import SearchSpace

    work = Path(tempfile.mkdtemp(prefix="search-cost-"))
    task = load_task("qa")
    data = load_task_data(task, args.jsquad, seed=args.seed, max_validation=args.validation)
    (work / "space.yaml").write_text(yaml.safe_dump(SPACE, allow_unicode=True))
    space = SearchSpace.load(task, work / "space.yaml")
    fewshot = demo_pool(task, data.fewshot)
    candidates = sample_candidates(task, space, args.candidates, args.seed)
    quiet_ray_start()
    ray.init(num_cpus=2 if args.engines is None else None, include_dashboard=False,
             log_to_driver=False)
    out: dict[str, Any] = {"validation": len(data.validation), "chunks": args.chunks,
                           "candidates": candidates}

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with EnginePool("gemma-3-270m", engines=args.engines, max_model_len=4096) as pool:
        log(f"(a) {len(candidates)} configurations x {len(data.validation)} rows, no cache")
        start, gens, scores = time.perf_counter(), 0, []
        for i, params in enumerate(candidates):
            result = evaluate(task, space.to_config(task, params), data.validation,
                              pool=pool, fewshot=fewshot)
            gens += result.generations - result.cached
            scores.append(result.metrics[task.primary_metric])
            log(f"  config {i + 1}: {scores[-1]:.2f}")
        out["a"] = {"generations": gens, "seconds": time.perf_counter() - start,
                    "best": max(scores), "scores": scores}
    out["reduction_factor"] = args.reduction_factor or PromptSearch.reduction_factor
    runs = [("b", "halving", "b"), ("b-asha", "asha", "b-asha"), ("c", "halving", "b")]
    for label, scheduler, cache in runs:
        searcher = PromptSearch(chunks=args.chunks, seed=args.seed, scheduler=scheduler,
                                reduction_factor=out["reduction_factor"])
        log(f"({label}) search with {scheduler} over the same {len(candidates)}, "
            f"cache in {work / cache}")
        with EnginePool("gemma-3-270m", engines=args.engines, max_model_len=4096,
                        cache=work / f"cache-{cache}") as pool:
            start = time.perf_counter()
            (work / label).mkdir()
            found = searcher.search(task, space=space, validation=data.validation,
                                    fewshot=fewshot, pool=pool, run_dir=work / label,
                                    candidates=candidates)
            stats = pool.cache_stats()
            out[label] = {"generations": stats["misses"], "hits": stats["hits"],
                          "seconds": time.perf_counter() - start, "best": found.best.score,
                          "pruned": sum(t.state == "pruned" for t in found.trials)}
    ray.shutdown()

    a, b, c, asha = out["a"], out["b"], out["c"], out["b-asha"]
    ratios = {"b/a generations": b["generations"] / a["generations"],
              "b-asha/a generations": asha["generations"] / a["generations"],
              "a best - b best": a["best"] - b["best"],
              "c hit rate": c["hits"] / max(c["hits"] + c["generations"], 1),
              "c/b time": c["seconds"] / b["seconds"],
              "a best - b-asha best": a["best"] - asha["best"]}
    targets = {"b/a generations": ("<=", 0.40), "a best - b best": ("<=", 1.0),
               "c hit rate": (">=", 0.99), "c/b time": ("<=", 0.20),
               "b-asha/a generations": None, "a best - b-asha best": None}
    print(f"\nsearch cost on JSQuAD: {len(data.validation)} validation rows, "
          f"{len(candidates)} configurations, {args.chunks} chunks, "
          f"eta {out['reduction_factor']}, seed {args.seed}\n")
    print(f"{'run':<40}{'generations':>12}{'seconds':>10}{'best char_f1':>14}{'pruned':>8}")
    rows = [("(a) every config, full validation", a, "-"),
            ("(b) search: halving + cache (default)", b, b["pruned"]),
            ("(b-asha) search: ASHA + cache", asha, asha["pruned"]),
            ("(c) identical re-run of (b)", c, c["pruned"])]
    for name, r, pruned in rows:
        print(f"{name:<40}{r['generations']:>12}{r['seconds']:>10.1f}{r['best']:>14.2f}"
              f"{pruned:>8}")
    print()
    for key, value in ratios.items():
        if targets[key] is None:
            print(f"{key:<22}{value:>8.3f}   (for comparison)")
            continue
        op, target = targets[key]
        ok = value <= target if op == "<=" else value >= target
        print(f"{key:<22}{value:>8.3f}   target {op} {target}   {'PASS' if ok else 'MISS'}")
    out["ratios"] = ratios
    results = REPO / "bench/results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "search_cost.json").write_text(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
