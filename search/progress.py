"""A one-line live progress display on stderr for long generations."""

from __future__ import annotations

import sys
import time


class ProgressLine:
    """Rows done, output tokens and tokens/s; redrawn in place on a terminal, else every 10%."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, max(total, 1)
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._last_decile = -1

    def __call__(self, done: int, tokens: int) -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        line = (f"{self.label}: {done}/{self.total} rows, {tokens} output tokens, "
                f"{tokens / elapsed:.1f} tok/s, {elapsed:.0f}s")
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if done >= self.total else ""))
            sys.stderr.flush()
            return
        decile = done * 10 // self.total
        if decile != self._last_decile:
            self._last_decile = decile
            print(line, file=sys.stderr, flush=True)
