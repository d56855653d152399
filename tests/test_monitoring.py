"""Dashboard monitoring: custom metrics and vLLM's engine metrics in Ray's Prometheus export
after a real (small) search, clear actor names, and a Grafana dashboard that queries only
metrics that exist."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from promptsearch.pipelines.engine import telemetry
from tests.conftest import REPO

DASHBOARD = REPO / "monitoring" / "grafana-dashboard.json"
Samples = dict[str, list[tuple[dict[str, str], float]]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            exprs.append(target["expr"])
    return exprs


def _queried_metrics() -> set[str]:
    return {m for e in _dashboard_exprs() for m in re.findall(r"\bray_[A-Za-z0-9_]+", e)}


def _vllm_exported_names() -> set[str]:
    """Every name vLLM's stat logger can export through Ray (``vllm:x`` -> ``ray_vllm_x``)."""
    import vllm.v1.metrics.loggers as loggers

    source = Path(loggers.__file__).read_text()
    bases = {"ray_" + n.replace(":", "_") for n in re.findall(r'name="(vllm:\w+)"', source)}
    return {b + s for b in bases for s in ("", "_total", "_bucket", "_sum", "_count")}


def test_grafana_dashboard_queries_only_defined_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ours = {n for m in telemetry.METRICS.values() for n in m.exported_names}
    queried = _queried_metrics()
    unknown = queried - ours - _vllm_exported_names()
    assert not unknown, unknown
    # every custom metric has a panel, and so do vLLM's throughput and latency
    for metric in telemetry.METRICS.values():
        assert queried & set(metric.exported_names), f"no panel for {metric.name}"
    for vllm_metric in ("ray_vllm_generation_tokens_total",
                        "ray_vllm_time_to_first_token_seconds_bucket",
                        "ray_vllm_e2e_request_latency_seconds_bucket"):
        assert vllm_metric in queried


def test_metric_definitions() -> None:
    for name, metric in telemetry.METRICS.items():
        assert name.startswith("promptsearch_") and metric.description, name
        assert metric.kind in ("counter", "gauge", "histogram")


def test_recording_never_raises(ray_session: None) -> None:
    broken = telemetry.Histogram("promptsearch_test_broken", "Ray refuses a 0 boundary.",
                                 boundaries=[0.0])
    broken.observe(1.0)  # creation fails inside: the metric turns itself off
    assert broken._failed
    counter = telemetry.Counter("promptsearch_test_counter", "A test.", ("a",))
    counter.inc(1, a="1", unknown_tag="dropped")
    counter.inc(0)  # Ray refuses a zero increment; ours skips it
    assert not counter._failed


def _scrape() -> Samples:
    """Every sample of every alive node's metrics agent (the Prometheus endpoint)."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = defaultdict(list)
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        text = requests.get(url, timeout=10).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[s.name].append((s.labels, s.value))
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for tags, v in samples.get(name, [])
               if all(tags.get(k) == want for k, want in labels.items()))


def _nonzero(samples: Samples, metric: telemetry._Metric) -> bool:
    name = metric.exported_names[-1]  # a histogram's _count, else the only name
    return any(v > 0 for _, v in samples.get(name, []))


def _problems(samples: Samples, engines: set[str], trials: list[dict],
              rows: dict[tuple[str, str], int]) -> list[str]:
    """What the scrape does not (yet) show: each custom metric non-zero, under the tags and
    with the values the run produced; vLLM's metrics from every engine; and a series for
    every metric the Grafana dashboard queries."""
    problems = [f"{m.name} absent or zero" for m in telemetry.METRICS.values()
                if not _nonzero(samples, m)]
    workers = set()
    for engine in engines:
        tags = {"engine": engine, "model": "gemma-3-270m"}
        for name, extra in (("ray_promptsearch_generated_tokens_total", {}),
                            ("ray_promptsearch_prompt_tokens_total", {}),
                            ("ray_promptsearch_requests_total", {"status": "ok"}),
                            ("ray_promptsearch_request_seconds_count", {})):
            if _value(samples, name, **tags, **extra) <= 0:
                problems.append(f"{name} {engine}")
        workers |= {t["WorkerId"] for t, _ in samples.get(
            "ray_promptsearch_generated_tokens_total", []) if t.get("engine") == engine}
    if not any(_value(samples, "ray_promptsearch_engine_queue_depth", engine=e) > 0
               for e in engines):
        problems.append("queue depth zero on every engine")
    for worker in workers:  # the same engine actors export vLLM's own metrics
        if _value(samples, "ray_vllm_generation_tokens_total", WorkerId=worker,
                  model_name="gemma-3-270m") <= 0:
            problems.append(f"no vLLM generation tokens from worker {worker}")
    run = {"task": "qa", "model": "gemma-3-270m"}
    scores = [v for t, v in samples.get("ray_promptsearch_trial_score", [])
              if t.get("task") == "qa" and t.get("trial", "").startswith("trial_")]
    for trial in trials:
        if not any(v == pytest.approx(trial["score"]) for v in scores):
            problems.append(f"trial score {trial['score']} not in {scores}")
    best = max(t["score"] for t in trials if t["state"] == "complete")
    if _value(samples, "ray_promptsearch_best_score", **run) != pytest.approx(best):
        problems.append(f"best score is not {best}")
    for (config, split), n in rows.items():
        tags = {**run, "config": config, "split": split}
        if (_value(samples, "ray_promptsearch_final_run_rows", **tags) != n
                or _value(samples, "ray_promptsearch_final_run_progress", **tags) != 1.0):
            problems.append(f"final run {config} on {split} not at {n} rows, 100%")
    return problems + [f"{m} absent" for m in sorted(_queried_metrics() - set(samples))]


def _keep_engines_busy(pool, stop: threading.Event) -> None:
    """Fresh prompts in a loop, so that the engines' queue-depth gauges are non-zero when Ray
    next exports them (a gauge reads 0 once the engines are idle)."""
    from promptsearch.pipelines.engine.sampling import Sampling

    round_ = 0
    while not stop.is_set():
        round_ += 1
        pool.generate([f"{round_}-{i}: 日本の昔話を一つ書いてください。" for i in range(16)],
                      Sampling(max_tokens=48))


@pytest.mark.engine
def test_small_search_exports_custom_and_vllm_metrics(pool, tmp_path: Path) -> None:
    import ray

    from promptsearch.search.run import RunSpec, execute_run, plan_run

    # The session's engines behind a generation cache of this run's own (empty: they generate).
    run_pool = pool.with_cache(tmp_path / "cache", max_model_len=2048)
    try:
        spec = RunSpec(task="qa", trials=2, chunks=2, max_validation=4, max_test=2,
                       max_model_len=2048)
        plan = plan_run(spec)
        summary = execute_run(plan, tmp_path / "run", pool=run_pool)
        names = set(ray.util.list_named_actors())
    finally:
        run_pool.shutdown()  # its cache only: the engines run on
    trials = pq.read_table(tmp_path / "run/trials.parquet").to_pylist()
    assert summary["cache"]["hits"] > 0 and summary["cache"]["misses"] > 0

    engines = {info["name"] for info in pool.engine_info()}
    assert len(engines) == pool.engines and engines <= names, (engines, names)
    assert all(re.fullmatch(r"engine-\d+:gemma-3-270m(#\d+)?", n) for n in engines), engines
    assert any(n.startswith("generation-cache") for n in names), names

    # The final run is one stream: best and baseline, each on validation and test.
    rows = {("best and baseline", "validation and test"):
            2 * len(plan.data.validation) + 2 * len(plan.data.test)}
    stop = threading.Event()
    busy = threading.Thread(target=_keep_engines_busy, args=(pool, stop), daemon=True)
    chunk_tokens, pool.chunk_tokens = pool.chunk_tokens, 256  # several chunks: both engines
    busy.start()
    deadline = time.monotonic() + 180
    problems = ["not scraped yet"]
    try:
        while time.monotonic() < deadline:  # Ray exports every few seconds: poll
            samples = _scrape()
            problems = _problems(samples, engines, trials, rows)
            if not problems:
                break
            time.sleep(2)
    finally:
        stop.set()
        busy.join(timeout=300)
        pool.chunk_tokens = chunk_tokens
    assert not problems, problems
