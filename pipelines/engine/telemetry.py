"""Metrics for the Ray dashboard and Prometheus, and the names engines and caches go by there.

Every custom metric of the project is defined here, once, through ``ray.util.metrics``. Ray
exports them from each node's metrics agent with a ``ray_`` prefix (counters also get
``_total``, histograms ``_bucket``/``_sum``/``_count``): ``promptsearch_generated_tokens`` is
scraped as ``ray_promptsearch_generated_tokens_total``. vLLM's own engine metrics
(``vllm:...``, exported as ``ray_vllm_...``) are switched on in ``engine.py``.

The Ray metric objects are created lazily, on first use in each process, because they need a
process connected to Ray (a driver after ``ray.init``, or an actor). Recording never raises:
when Ray is not initialised, or metrics cannot be created, a call does nothing, so metrics
export can never break a generation.

Ray drops a gauge series about 20 s after it was last set, so a gauge set once (a finished
trial's score, a final run at 100 %) would vanish from Prometheus. Each process therefore
re-sets its gauges' latest values every few seconds, from one daemon thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

log = logging.getLogger(__name__)

PREFIX = "promptsearch_"
REFRESH_SECONDS = 5.0
"""How often gauges are re-set: well inside Ray's eviction (twice its 10 s report interval)."""


class _Metric:
    """One metric: its definition here, its Ray object created on first use per process."""

    kind = ""

    def __init__(self, name: str, description: str, tags: Sequence[str] = ()) -> None:
        if not name.startswith(PREFIX):
            raise ValueError(f"metric name must start with {PREFIX!r}, got {name!r}")
        self.name = name
        self.description = description
        self.tags = tuple(tags)
        self._ray_metric: Any = None
        self._failed = False
        self._lock = threading.Lock()

    @property
    def exported_names(self) -> tuple[str, ...]:
        """The series names Prometheus sees through Ray's exporter."""
        return (f"ray_{self.name}",)

    def _create(self) -> Any:
        raise NotImplementedError

    def _get(self) -> Any:
        if self._ray_metric is not None or self._failed:
            return self._ray_metric
        try:
            import ray

            if not ray.is_initialized():
                return None  # not yet: a driver may call ray.init later
            with self._lock:
                if self._ray_metric is None:
                    self._ray_metric = self._create()
        except Exception as exc:
            self._failed = True
            log.warning("metric %s is disabled: %s", self.name, exc)
        return self._ray_metric

    def _tags(self, tags: dict[str, object]) -> dict[str, str]:
        return {k: str(tags.get(k, "")) for k in self.tags}

    def _record(self, method: str, value: float, tags: dict[str, str]) -> None:
        metric = self._get()
        if metric is None:
            return
        try:
            getattr(metric, method)(value, tags=tags)
        except Exception as exc:
            log.debug("metric %s: %s", self.name, exc)


class Counter(_Metric):
    kind = "counter"

    @property
    def exported_names(self) -> tuple[str, ...]:
        return (f"ray_{self.name}_total",)

    def _create(self) -> Any:
        from ray.util import metrics

        return metrics.Counter(self.name, description=self.description, tag_keys=self.tags)

    def inc(self, value: float = 1.0, **tags: object) -> None:
        if value > 0:  # Ray refuses a zero increment
            self._record("inc", value, self._tags(tags))


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, description: str, tags: Sequence[str] = ()) -> None:
        super().__init__(name, description, tags)
        self._latest: dict[tuple[tuple[str, str], ...], float] = {}

    def _create(self) -> Any:
        from ray.util import metrics

        return metrics.Gauge(self.name, description=self.description, tag_keys=self.tags)

    def set(self, value: float, **tags: object) -> None:
        clean = self._tags(tags)
        with _refresh_lock:
            self._latest[tuple(sorted(clean.items()))] = value
        _Refresher.start(self)
        self._record("set", value, clean)

    def _refresh(self) -> None:
        with _refresh_lock:
            latest = list(self._latest.items())
        for key, value in latest:
            self._record("set", value, dict(key))


_refresh_lock = threading.Lock()


class _Refresher:
    """The one thread per process that keeps its gauges' latest values exported."""

    gauges: ClassVar[set[Gauge]] = set()
    thread: ClassVar[threading.Thread | None] = None

    @classmethod
    def start(cls, gauge: Gauge) -> None:
        with _refresh_lock:
            cls.gauges.add(gauge)
            if cls.thread is None:
                cls.thread = threading.Thread(target=cls._run, name="promptsearch-metrics",
                                              daemon=True)
                cls.thread.start()

    @classmethod
    def _run(cls) -> None:
        import ray

        while True:
            time.sleep(REFRESH_SECONDS)
            if not ray.is_initialized():
                continue
            with _refresh_lock:
                gauges = list(cls.gauges)
            for gauge in gauges:
                gauge._refresh()


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, description: str, tags: Sequence[str] = (), *,
                 boundaries: Sequence[float]) -> None:
        super().__init__(name, description, tags)
        self.boundaries = list(boundaries)

    @property
    def exported_names(self) -> tuple[str, ...]:
        return tuple(f"ray_{self.name}_{s}" for s in ("bucket", "sum", "count"))

    def _create(self) -> Any:
        from ray.util import metrics

        return metrics.Histogram(self.name, description=self.description,
                                 boundaries=self.boundaries, tag_keys=self.tags)

    def observe(self, value: float, **tags: object) -> None:
        self._record("observe", value, self._tags(tags))


# -- engines (pipelines/engine/actor.py) ----------------------------------------------------------
_ENGINE = ("engine", "model")

REQUESTS = Counter(
    "promptsearch_requests",
    "Generations finished by an engine, by status (ok or error); cache hits never reach one.",
    (*_ENGINE, "status"))
PROMPT_TOKENS = Counter(
    "promptsearch_prompt_tokens", "Prompt tokens sent to an engine.", _ENGINE)
GENERATED_TOKENS = Counter(
    "promptsearch_generated_tokens", "Output tokens generated by an engine.", _ENGINE)
REQUEST_SECONDS = Histogram(
    "promptsearch_request_seconds",
    "Wall time of one generation inside an engine actor: queueing, prefill and decode.",
    _ENGINE, boundaries=[0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300])
QUEUE_DEPTH = Gauge(
    "promptsearch_engine_queue_depth",
    "Requests inside an engine: waiting (no token yet: queued or in prefill) or running "
    "(decoding).", (*_ENGINE, "state"))

# -- generation cache (pipelines/engine/cache.py) -------------------------------------------------
CACHE_HITS = Counter(
    "promptsearch_cache_hits", "Generations served from the generation cache.")
CACHE_MISSES = Counter(
    "promptsearch_cache_misses", "Cache look-ups that found nothing, so went to an engine.")

# -- the search and the final run (search/progress.py) --------------------------------------------
TRIAL_SCORE = Gauge(
    "promptsearch_trial_score",
    "A trial's running validation score (primary metric) after its latest chunk.",
    ("task", "model", "trial"))
TRIAL_CHUNK = Gauge(
    "promptsearch_trial_chunk", "Validation chunks a trial has scored so far.",
    ("task", "model", "trial"))
BEST_SCORE = Gauge(
    "promptsearch_best_score",
    "Best validation score among trials that scored every chunk, so far.", ("task", "model"))
TRIALS_FINISHED = Counter(
    "promptsearch_trials_finished",
    "Trials finished, by state: complete (every chunk), pruned (stopped early) or error.",
    ("task", "model", "state"))
FINAL_RUN_ROWS = Gauge(
    "promptsearch_final_run_rows",
    "Rows generated so far by a final run (best or baseline configuration on a split).",
    ("task", "model", "split", "config"))
FINAL_RUN_PROGRESS = Gauge(
    "promptsearch_final_run_progress",
    "Share of a final run's rows done, from 0 to 1.", ("task", "model", "split", "config"))

METRICS: dict[str, _Metric] = {m.name: m for m in (
    REQUESTS, PROMPT_TOKENS, GENERATED_TOKENS, REQUEST_SECONDS, QUEUE_DEPTH, CACHE_HITS,
    CACHE_MISSES, TRIAL_SCORE, TRIAL_CHUNK, BEST_SCORE, TRIALS_FINISHED, FINAL_RUN_ROWS,
    FINAL_RUN_PROGRESS)}
"""Every custom metric, by name (what the Grafana dashboard may query)."""


def actor_name(base: str) -> str:
    """``base``, or ``base#2``, ``base#3``... if a live actor in this Ray namespace has it.

    Engines and the cache are named actors so that the Ray dashboard says what they are; two
    pools in one driver (tests, benchmarks) must not collide on a name.
    """
    import ray

    name, n = base, 1
    while True:
        try:
            ray.get_actor(name)
        except ValueError:
            return name
        n += 1
        name = f"{base}#{n}"


__all__ = ["METRICS", "Counter", "Gauge", "Histogram", "actor_name"]
