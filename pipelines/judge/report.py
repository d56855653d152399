"""How a run shows its judge: one line for the terminal, a few for ``report.md``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _unparsable(judge: Mapping[str, Any]) -> str:
    shares = judge.get("unparsable_percent") or {}
    return ", ".join(f"{split} {share:.1f}%" for split, share in shares.items()
                     if share is not None) or "n/a"


def judge_line(judge: Mapping[str, Any]) -> str:
    """The judge, its rubric version, its unparsable share and what it cost, on one line."""
    cost = judge["cost"]["total"]
    return (f"judge: {judge['model']} ({judge['kind']}, prompt v{judge['prompt_version']}), "
            f"unparsable grades {_unparsable(judge)}; {cost['calls']} calls "
            f"({cost['cached']} cached), {cost['prompt_tokens'] + cost['output_tokens']} "
            f"tokens, {cost['seconds']:.0f}s")


def judge_report_lines(judge: Mapping[str, Any]) -> list[str]:
    """``report.md``'s judge section (``summary.json``'s ``judge``)."""
    lines = ["", "## Judge", "",
             f"Graded by **{judge['model']}** ({judge['kind']}), rubric "
             f"`JUDGE_PROMPT_VERSION` {judge['prompt_version']}; scores are mean grades 1-5 "
             "over the rows the judge graded.", "",
             f"Rows without a parsable grade (after one retry): {_unparsable(judge)}.", "",
             "| judge cost | calls | cache hits | prompt tokens | output tokens | seconds |",
             "|---|---|---|---|---|---|"]
    for part in ("search", "final", "total"):
        cost = judge["cost"].get(part)
        if cost:
            lines.append(f"| {part} | {cost['calls']} | {cost['cached']} | "
                         f"{cost['prompt_tokens']} | {cost['output_tokens']} | "
                         f"{cost['seconds']:.1f} |")
    return lines
