"""The one exception type that means "the user's input is wrong"."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (file, field, option or config).

    The CLI prints the message as a single line and exits with code 2, without a traceback.
    The message names the file, line or field at fault and says what to do.
    """
