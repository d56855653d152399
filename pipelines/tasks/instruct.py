"""Instruction following: M-IFEval strict/loose verdicts per instruction.

Instruction-level accuracy is a ratio over all instructions, not a mean over prompts, so the
split-level numbers are recomputed from the per-instruction verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from promptsearch.pipelines.ifeval import InstructionVerdict, evaluate_response
from promptsearch.pipelines.ifeval import aggregate as ifeval_aggregate


def score_row(output: str, example: Mapping[str, Any]) -> dict[str, Any]:
    verdicts = evaluate_response(output, list(example["instruction_id_list"]),
                                 list(example["kwargs"]))
    row: dict[str, Any] = ifeval_aggregate([verdicts])
    row["instructions"] = [{"instruction_id": v.instruction_id, "strict": v.strict,
                            "loose": v.loose} for v in verdicts]
    return row


def aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return ifeval_aggregate([[InstructionVerdict(**v) for v in row["instructions"]]
                             for row in rows])
