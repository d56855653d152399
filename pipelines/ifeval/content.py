"""ja:detectable_content:* checks."""

from __future__ import annotations

import re


def number_placeholders(value: str, *, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", value)) >= num_placeholders


def postscript(value: str, *, postscript_marker: str) -> bool:
    """The marker may appear anywhere in a line: the reference pattern has no `^` anchor.

    Exactly "P.S." and "P.P.S" allow a space after each dot; every other marker, "P.P.S."
    included, matches literally. Case is ignored.

    The reference's patterns are these between ``\\s*`` and ``.*$`` (MULTILINE); both can match
    the empty string, so whether there is a match is whether the core is found. Searching for
    the core alone gives the same verdict without the wrapper's quadratic time on long runs
    of whitespace.
    """
    if postscript_marker == "P.P.S":
        pattern = r"p\.\s?p\.\s?s"
    elif postscript_marker == "P.S.":
        pattern = r"p\.\s?s\."
    else:
        pattern = re.escape(postscript_marker)
    return re.search(pattern, value, flags=re.IGNORECASE) is not None
