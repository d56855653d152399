"""Engines: embedded models, the vLLM engine actor, the pool that shards requests across
engines, the generation cache and the engines' metrics.

Nothing here imports Ray or vLLM at import time; the pool starts them.
"""

from promptsearch.pipelines.engine.actor import EngineActor, EngineConfig, EngineDied, Generation
from promptsearch.pipelines.engine.cache import GenerationCache, generation_key
from promptsearch.pipelines.engine.models import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    model_fingerprint,
    prepare_model,
    resolve_model,
)
from promptsearch.pipelines.engine.pool import EnginePool, EngineStartError, Progress, Request
from promptsearch.pipelines.engine.sampling import Sampling

__all__ = ["DEFAULT_MODEL", "EMBEDDED_MODELS", "EngineActor", "EngineConfig", "EngineDied",
           "EnginePool", "EngineStartError", "Generation", "GenerationCache", "Progress",
           "Request", "Sampling", "generation_key", "model_fingerprint", "prepare_model",
           "resolve_model"]
