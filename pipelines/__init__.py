"""Batch inference on Ray: data, prompt rendering, engines, cache, tasks and metrics."""
