"""``RUN_DIR/library.log``: what Ray, Tune, Optuna, vLLM, transformers and torch log in the
driver during a run, kept in the run directory instead of dropped.

Without ``-v`` the terminal shows promptsearch's own lines only. The libraries are kept quiet
by the levels set on their loggers: ``ray.init(logging_level=...)`` (``runtime.init_ray``),
Optuna's ``set_verbosity``, ``driver._quiet_tune``. A logger's level drops a record before
any handler sees it, so what they said was lost. While ``library_log(path)`` is open:

- a level set on a library's logger (before or during the run, by anyone) decides only what
  the *terminal* shows: the logger itself stays open down to INFO, and a filter on the
  terminal handlers drops what that level would have dropped, so the terminal shows exactly
  what it showed before, with or without ``-v``. Those levels are set by code outside this
  module, most of them in the middle of the run (``ray.init``, the search's start), so
  ``logging.Logger.setLevel`` is wrapped while the file is open to catch them;
- one file handler on the libraries' loggers appends every INFO-and-up record to ``path``
  (a ``--resume`` continues the file); the file is created with the first record;
- on leaving, the levels asked for are put back and the handler and filters removed.

Records of the trial, evaluator and engine processes are not here: Ray keeps those in its
session's log directory (``/tmp/ray/session_latest/logs``; shown with ``-v``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

LIBRARY_LOG = "library.log"
"""The file's name in the run directory."""
LIBRARIES = ("ray", "optuna", "vllm", "transformers", "torch")
"""Top-level logger names of the libraries whose records go to the file."""

_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
_logger_set_level = logging.Logger.setLevel
F = TypeVar("F", bound=Callable[..., Any])


def _is_library(name: str) -> bool:
    return name.split(".", 1)[0] in LIBRARIES


class _LibraryFile(logging.FileHandler):
    """Appends to the file, in one format: ``ray.init`` re-formats every handler of the
    ``ray`` logger, this one included, so it ignores ``setFormatter``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, mode="a", encoding="utf-8", delay=True)
        self.formatter = _FORMAT
        self.setLevel(logging.INFO)

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        pass


class _TerminalLevels(logging.Filter):
    """On a terminal handler: a library's record passes only at or above the level asked for
    its logger (or the nearest ancestor with one), as the logger itself would have decided."""

    def __init__(self, asked: dict[str, int]) -> None:
        super().__init__()
        self.asked = asked

    def filter(self, record: logging.LogRecord) -> bool:
        if not _is_library(record.name):
            return True
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            level = self.asked.get(logger.name, logger.level)
            if level:
                return record.levelno >= level
            logger = logger.parent
        return True


class _LibraryLog:
    def __init__(self, path: Path) -> None:
        self.file = _LibraryFile(path)
        self.asked: dict[str, int] = {}
        """Library logger name -> the level asked for it (what the terminal shows)."""
        self.terminal = _TerminalLevels(self.asked)
        self.filtered: list[logging.Handler] = []

    def open(self) -> None:
        for logger in _library_loggers():
            if logger.level > logging.INFO:
                self._pin(logger)
        for name in LIBRARIES:
            top = logging.getLogger(name)
            if top.getEffectiveLevel() > logging.INFO and top.name not in self.asked:
                self._pin(top)  # inherits the root's level: open it here
            top.addHandler(self.file)

        def set_level(logger: logging.Logger, level: int | str) -> None:
            self._level_set(logger, level)

        logging.Logger.setLevel = set_level  # type: ignore[method-assign]
        self._filter_terminals()

    def _level_set(self, logger: logging.Logger, level: int | str) -> None:
        """``Logger.setLevel`` while the file is open."""
        _logger_set_level(logger, level)
        if _is_library(logger.name):
            self._pin(logger)
            self._filter_terminals()  # a library that sets a level may just have added a handler

    def _pin(self, logger: logging.Logger) -> None:
        """Keep the level asked for ``logger`` for the terminal; open the logger to INFO."""
        self.asked[logger.name] = logger.level
        if logger.level > logging.INFO or (
                not logger.level and logger.getEffectiveLevel() > logging.INFO):
            _logger_set_level(logger, logging.INFO)

    def _filter_terminals(self) -> None:
        for logger in [logging.getLogger(), *_library_loggers()]:
            for handler in logger.handlers:
                if handler is not self.file and self.terminal not in handler.filters:
                    handler.addFilter(self.terminal)
                    self.filtered.append(handler)

    def close(self) -> None:
        logging.Logger.setLevel = _logger_set_level  # type: ignore[method-assign]
        for name, level in self.asked.items():
            _logger_set_level(logging.getLogger(name), level)
        for name in LIBRARIES:
            logging.getLogger(name).removeHandler(self.file)
        for handler in self.filtered:
            handler.removeFilter(self.terminal)
        self.file.close()


def _library_loggers() -> list[logging.Logger]:
    return [logger for name, logger in list(logging.Logger.manager.loggerDict.items())
            if isinstance(logger, logging.Logger) and _is_library(name)]


@contextlib.contextmanager
def library_log(path: Path) -> Iterator[None]:
    """The libraries' records (INFO and up) of this process go to ``path`` while open; the
    terminal shows what it would have shown without it."""
    log = _LibraryLog(path)
    log.open()
    try:
        yield
    finally:
        log.close()


def writes_library_log(execute_run: F) -> F:
    """For ``execute_run(plan, run_dir, ...)``: the run's ``library.log``."""

    @functools.wraps(execute_run)
    def run(plan: Any, run_dir: Path, *args: Any, **kwargs: Any) -> Any:
        with library_log(Path(run_dir) / LIBRARY_LOG):
            return execute_run(plan, run_dir, *args, **kwargs)

    return run  # type: ignore[return-value]
