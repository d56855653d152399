"""ja:combination:* checks."""

from __future__ import annotations


def two_responses(value: str) -> bool:
    """Exactly two different non-empty answers around `******`; empty pieces only at either end."""
    answers = []
    pieces = value.split("******")
    for index, piece in enumerate(pieces):
        if piece.strip():
            answers.append(piece.strip())
        elif index not in (0, len(pieces) - 1):
            return False
    return len(answers) == 2 and answers[0] != answers[1]


def repeat_prompt(value: str, *, prompt_to_repeat: str) -> bool:
    return value.strip().startswith(prompt_to_repeat.strip())
