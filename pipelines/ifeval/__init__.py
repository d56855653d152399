"""Instruction-following metric: the 33 Japanese instruction types of M-IFEval.

Checks mirror M-IFEval's `instructions/ja_instructions.py`; strict and loose scoring mirror its
`evaluation_main.py`. Heavy dependencies (janome, the reference's tokenizer, for 体言止め;
langdetect for the response language) are imported on first use.
"""

from __future__ import annotations

from .registry import INSTRUCTION_IDS, check_instruction, validate_kwargs
from .scoring import InstructionVerdict, aggregate, evaluate_response

__all__ = [
    "INSTRUCTION_IDS",
    "InstructionVerdict",
    "aggregate",
    "check_instruction",
    "evaluate_response",
    "validate_kwargs",
]
