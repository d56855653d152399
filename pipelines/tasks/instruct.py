"""Instruction following (M-IFEval): reads M-IFEval JSONL, checks each row's instruction ids
and kwargs, and keeps the per-instruction verdicts of every row.

Instruction-level accuracy is a ratio over all instructions, not a mean over prompts, so the
split-level numbers are recomputed from those verdicts. With a small model, prompt-level
strict accuracy is 0 for most configurations; ``run --metric inst_level_loose_acc`` gives a
search a signal to climb.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from promptsearch.pipelines.data.datasets import decode_instructions, load_mifeval
from promptsearch.pipelines.ifeval import InstructionVerdict
from promptsearch.pipelines.ifeval import aggregate as ifeval_aggregate
from promptsearch.pipelines.metrics.ifeval import Instructions, verdicts


def read_file(path: Path, field_map: Mapping[str, str] | None) -> list[dict[str, Any]] | None:
    if path.suffix == ".jsonl" and not field_map:
        return load_mifeval(path)
    return None


def decode(example: dict[str, Any], where: str) -> set[str]:
    if example.get("instruction_id_list") is None and example.get("kwargs") is None:
        return set()
    example["instruction_id_list"], example["kwargs"] = decode_instructions(example, where)
    return {"instruction_id_list", "kwargs"}


def reference(example: Mapping[str, Any]) -> Instructions:
    return Instructions.of(example["instruction_id_list"], example["kwargs"])


def details(answer: str, example: Mapping[str, Any]) -> dict[str, Any]:
    return {"instructions": [{"instruction_id": v.instruction_id, "strict": v.strict,
                              "loose": v.loose} for v in verdicts(answer, reference(example))]}


def aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return ifeval_aggregate([[InstructionVerdict(**v) for v in row["instructions"]]
                             for row in rows])
