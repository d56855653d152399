"""Batch inference on Ray, by stage: ``data`` (tables in and out), ``prompting`` (render,
few-shot, parse), ``tasks`` (a YAML and a module each), ``engine`` (models, engines, pool,
cache), ``metrics`` (registered by name), ``judge`` (a model as the metric), and
``evaluate`` (one configuration over examples: render, generate, parse, score)."""

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """A package's ``__getattr__`` (PEP 562) for names whose modules read the tasks, while
    the tasks import the package's other modules: they load on first use, not with it."""

    def __getattr__(name: str) -> Any:
        if name in modules:
            return getattr(import_module(f"{package}.{modules[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
