"""ja:detectable_content:* checks."""

from __future__ import annotations

import re


def number_placeholders(value: str, *, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", value)) >= num_placeholders


def postscript(value: str, *, postscript_marker: str) -> bool:
    """The marker may appear anywhere in a line: the reference pattern has no `^` anchor.

    Exactly "P.S." and "P.P.S" allow a space after each dot; every other marker, "P.P.S."
    included, matches literally. Case is ignored.
    """
    if postscript_marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif postscript_marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(postscript_marker) + r".*$"
    return bool(re.findall(pattern, value, flags=re.IGNORECASE | re.MULTILINE))
