"""Generation throughput on one CPU core: raw ``vllm.LLM`` vs ``EnginePool`` vs ``ray.data.llm``.

Same prompts (JSQuAD QA), same model, greedy decoding, fixed ``max_tokens``; each way runs one
engine bound to core 0, one after another. Throughput = output tokens / generation wall time,
engine start excluded (measured separately). Run: ``.venv/bin/python bench/throughput.py``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
DEFAULT_JSQUAD = HERE.parents[2] / "shared/data/jsquad/valid-v1.3.json"
RESULTS = HERE.parent / "results" / "throughput.json"
CPU_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_CPU_KVCACHE_SPACE": "2"}
# The settings of EngineActor._start_engine (EngineConfig defaults).
ENGINE_KWARGS: dict[str, Any] = {"dtype": "auto", "max_model_len": 4096, "seed": 0,
                                 "enforce_eager": True, "enable_prefix_caching": True,
                                 "distributed_executor_backend": "uni"}
TARGETS = {"b/a": 0.95, "b/c": 1.0}


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_prompts(path: Path, n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` questions, and 4 warm-up prompts from the end of the file (no shared
    context, so the warm-up leaves nothing in the prefix cache for the timed batch)."""
    from promptsearch.pipelines.datasets import load_jsquad

    rows = load_jsquad(path)
    if n + 4 > len(rows):
        raise SystemExit(f"--n {n}: {path} has only {len(rows)} questions")
    fmt = "{context}\n質問: {question}\n回答:"
    return [fmt.format(**r) for r in rows[:n]], [fmt.format(**r) for r in rows[-4:]]


def result(start: float, seconds: float, rows: list[dict[str, Any]], **extra: Any) -> dict:
    tokens = sum(r["output_tokens"] for r in rows)
    return {"engine_start_s": start, "generation_s": seconds, "output_tokens": tokens,
            "tokens_per_s": tokens / seconds, "rows": rows, **extra}


# -- (a) vllm.LLM in a spawned child, so its engine process is gone when the child exits --------
def _way_a_child(model_dir: str, prompts: list[str], warmup: list[str], max_tokens: int,
                 out: str) -> None:
    os.environ.update(CPU_ENV)
    from vllm import LLM

    from promptsearch.pipelines.sampling import Sampling

    params = Sampling(max_tokens=max_tokens).to_vllm()
    t0 = time.perf_counter()
    llm = LLM(model=model_dir, **ENGINE_KWARGS)
    start = time.perf_counter() - t0
    llm.generate(warmup, params, use_tqdm=False)
    t1 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - t1
    rows = [{"text": o.outputs[0].text, "prompt_tokens": len(o.prompt_token_ids),
             "output_tokens": len(o.outputs[0].token_ids)} for o in outs]
    sched = llm.llm_engine.vllm_config.scheduler_config
    Path(out).write_text(json.dumps(result(
        start, seconds, rows, max_num_seqs=sched.max_num_seqs,
        max_num_batched_tokens=sched.max_num_batched_tokens), ensure_ascii=False))
    llm.llm_engine.engine_core.shutdown()  # else this child waits forever on EngineCore


def way_a(model_dir: str, prompts: list[str], warmup: list[str], max_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "a.json")
        child = mp.get_context("spawn").Process(
            target=_way_a_child, args=(model_dir, prompts, warmup, max_tokens, out))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"(a) vllm.LLM child failed with exit code {child.exitcode}")
        return json.loads(Path(out).read_text())


# -- (b) the project's EnginePool ---------------------------------------------------------------
def way_b(model: str, prompts: list[str], warmup: list[str], max_tokens: int,
          pool_kwargs: dict[str, Any]) -> dict:
    from promptsearch.pipelines.pool import EnginePool
    from promptsearch.pipelines.sampling import Sampling

    sampling = Sampling(max_tokens=max_tokens)
    t0 = time.perf_counter()
    pool = EnginePool(model, engines=1, **pool_kwargs)
    try:
        start = time.perf_counter() - t0
        pool.generate(warmup, sampling)
        t1 = time.perf_counter()
        gens = pool.generate(prompts, sampling)
        seconds = time.perf_counter() - t1
        info = pool.engine_info()
    finally:
        pool.shutdown()
    errors = [g.error for g in gens if not g.ok]
    if errors:
        raise SystemExit(f"(b) {len(errors)} rows failed, first: {errors[0]}")
    rows = [{"text": g.text, "prompt_tokens": g.prompt_tokens,
             "output_tokens": g.output_tokens} for g in gens]
    return result(start, seconds, rows, engine_cores=info[0]["cores"], pool_kwargs=pool_kwargs)


# -- (c) ray.data.llm processor -------------------------------------------------------------------
def way_c(model_dir: str, prompts: list[str], max_tokens: int) -> dict:
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    config = vLLMEngineProcessorConfig(
        model_source=model_dir, engine_kwargs=dict(ENGINE_KWARGS), concurrency=1,
        placement_group_config={"bundles": [{"CPU": 1, "GPU": 0}]},
        runtime_env={"env_vars": CPU_ENV},
        # Plain prompts: vLLM tokenises them itself (HF tokenizer, BOS added), as in (a).
        # Separate tokenize/detokenize CPU actors would not fit next to the engine on 2 cores.
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False)
    sampling = {"temperature": 0.0, "top_p": 1.0, "max_tokens": max_tokens,
                "repetition_penalty": 1.0}
    processor = build_processor(
        config,
        preprocess=lambda row: {"idx": row["idx"], "prompt": row["prompt"],
                                "sampling_params": sampling},
        postprocess=lambda row: {
            "idx": row["idx"], "text": row["generated_text"],
            "prompt_tokens": row["num_input_tokens"],
            "output_tokens": row["num_generated_tokens"],
            "llm_s": row["time_taken_llm"], "done_at": time.time()})
    t0, wall0 = time.perf_counter(), time.time()
    out = processor(ray.data.from_items(
        [{"idx": i, "prompt": p} for i, p in enumerate(prompts)])).take_all()
    whole = time.perf_counter() - t0
    out.sort(key=lambda r: r["idx"])
    # Generation window: earliest request submission (row done time minus its in-engine time)
    # to the last row done; both ends are stamped by the same postprocess step.
    first = min(r["done_at"] - r["llm_s"] for r in out)
    last = max(r["done_at"] for r in out)
    rows = [{k: r[k] for k in ("text", "prompt_tokens", "output_tokens")} for r in out]
    res = result(first - wall0, last - first, rows, whole_execution_s=whole)
    res["whole_tokens_per_s"] = res["output_tokens"] / whole
    return res


# -- report ---------------------------------------------------------------------------------------
def report(res: dict[str, dict], args: argparse.Namespace, model_dir: str) -> dict:
    a, b, c = res["a"], res["b"], res["c"]
    lines = [("way", "engine start (s)", "generation (s)", "output tokens", "tokens/s")]

    def line(name: str, r: dict, secs: float, tps: float, start: str | None = None) -> None:
        lines.append((name, start or f"{r['engine_start_s']:.1f}", f"{secs:.2f}",
                      str(r["output_tokens"]), f"{tps:.1f}"))

    line("(a) vllm.LLM", a, a["generation_s"], a["tokens_per_s"])
    line("(b) EnginePool", b, b["generation_s"], b["tokens_per_s"])
    line("(c) ray.data.llm, generation only *", c, c["generation_s"], c["tokens_per_s"])
    line("(c) ray.data.llm, whole execution", c, c["whole_execution_s"],
         c["whole_tokens_per_s"], start="(incl.)")
    widths = [max(len(row[i]) for row in lines) for i in range(5)]
    print(f"\nmodel {args.model}, {args.n} JSQuAD prompts, greedy, max_tokens {args.max_tokens},"
          " one engine on core 0 each\n")
    for row in lines:
        print("  ".join([row[0].ljust(widths[0])] + [v.rjust(w) for v, w in
                                                      zip(row[1:], widths[1:], strict=True)]))
    ratios = {"b/a": b["tokens_per_s"] / a["tokens_per_s"],
              "b/c": b["tokens_per_s"] / c["tokens_per_s"]}
    print("\n* b/c uses (c) generation only: first request submitted -> last row out.")
    for key, value in ratios.items():
        verdict = "PASS" if value >= TARGETS[key] else "MISS"
        print(f"{key} = {value:.3f}  (target >= {TARGETS[key]:.2f})  {verdict}")
    texts = {k: [r["text"] for r in v["rows"]] for k, v in res.items()}
    ptoks = {k: [r["prompt_tokens"] for r in v["rows"]] for k, v in res.items()}
    diff = {f"{x}!={y}": sum(p != q for p, q in zip(texts[x], texts[y], strict=True))
            for x, y in (("a", "b"), ("a", "c"), ("b", "c"))}
    same_prompts = ptoks["a"] == ptoks["b"] == ptoks["c"]
    print(f"prompt token counts identical across a/b/c: {same_prompts} "
          f"(total {sum(ptoks['a'])} prompt tokens)")
    print("greedy outputs, differing rows: " + ", ".join(f"{k}: {v}" for k, v in diff.items())
          + f"  ({'IDENTICAL' if not any(diff.values()) else 'NOT identical'})")
    print(f"(a) scheduler: max_num_seqs {a['max_num_seqs']}, max_num_batched_tokens "
          f"{a['max_num_batched_tokens']} (vllm.LLM defaults on CPU)")
    return {"model": args.model, "model_dir": model_dir, "n": args.n,
            "max_tokens": args.max_tokens, "engine_settings": ENGINE_KWARGS, "cpu_env": CPU_ENV,
            "ways": {k: {f: v for f, v in r.items() if f != "rows"} for k, r in res.items()},
            "ratios": ratios, "targets": TARGETS,
            "pass": {k: ratios[k] >= TARGETS[k] for k in ratios},
            "prompt_tokens_identical": same_prompts, "differing_rows": diff,
            "c_ratio_basis": "generation only (first request submitted -> last row out)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--n", type=int, default=256, help="number of prompts")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--jsquad", type=Path, default=DEFAULT_JSQUAD)
    parser.add_argument("--chunk-tokens", type=int, default=None, help="EnginePool override")
    parser.add_argument("--chunks-in-flight", type=int, default=None, help="EnginePool override")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    from promptsearch.pipelines.models import resolve_model

    model_dir = resolve_model(args.model)
    prompts, warmup = make_prompts(args.jsquad, args.n)
    pool_kwargs = {k: v for k, v in (("chunk_tokens", args.chunk_tokens),
                                     ("chunks_in_flight", args.chunks_in_flight)) if v}
    res: dict[str, dict] = {}
    say(f"{len(prompts)} prompts, model {model_dir}")
    say("(a) vllm.LLM: starting engine in a child process")
    res["a"] = way_a(model_dir, prompts, warmup, args.max_tokens)
    say(f"(a) done: {res['a']['tokens_per_s']:.1f} tokens/s")

    import ray

    ray.init(num_cpus=2)
    try:
        say("(b) EnginePool: starting one engine")
        res["b"] = way_b(args.model, prompts, warmup, args.max_tokens, pool_kwargs)
        say(f"(b) done: {res['b']['tokens_per_s']:.1f} tokens/s")
        say("(c) ray.data.llm: running the processor (engine start included)")
        res["c"] = way_c(model_dir, prompts, args.max_tokens)
        say(f"(c) done: {res['c']['tokens_per_s']:.1f} tokens/s (generation only)")
    finally:
        ray.shutdown()
    summary = report(res, args, model_dir)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
