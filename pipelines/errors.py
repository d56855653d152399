"""The one exception type that means "the user's input is wrong"."""

from __future__ import annotations

import re


class UserError(Exception):
    """A problem with the user's input (file, field, option or config).

    The CLI prints the message as a single line and exits with code 2, without a traceback.
    The message names the file, line or field at fault and says what to do.
    """


def one_line(exc: BaseException, *, limit: int = 300) -> str:
    """An exception's message on one line, for a user-facing error."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


_RAISED = re.compile(r"^([\w.]*(?:Error|Exception)\w*): (.*)$")


def last_line(exc: BaseException, *, limit: int = 300) -> str:
    """What a (remote) traceback says went wrong: its last ``SomeError: message`` line, with
    the first detail line under it (pydantic puts the reason there), else its last line."""
    lines = [line for line in str(getattr(exc, "cause", None) or exc).splitlines()
             if line.strip() and not line.strip().startswith("For further information")]
    for i in range(len(lines) - 1, -1, -1):
        raised = _RAISED.match(lines[i])
        if raised:
            text = f"{raised.group(1).rsplit('.', 1)[-1]}: {raised.group(2)}"
            if i + 1 < len(lines) and lines[i + 1].startswith(" "):
                text += f" ({lines[i + 1].strip()})"
            return text[:limit]
    return (lines[-1].strip() if lines else type(exc).__name__)[:limit]
