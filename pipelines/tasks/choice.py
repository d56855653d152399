"""Multiple choice (JCommonsenseQA, JGLUE's format): ``q_id``, ``question``, ``choice0`` ..
``choice4`` and the correct ``label`` (0-4).

The answer of a generation is the index of the choice it names, as text (``"2"``), found by
``parsing.pick_choice``: the exact text of a choice, else a leading index, else a choice the
text contains, else the choice sharing most characters with it; ``""`` when it names none
(scored wrong). Mapping an index gives the same index, so ``score`` recomputes a run's
figures from its predictions, and it also accepts predictions written as choice texts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.prompting.parsing import pick_choice

CHOICES = tuple(f"choice{i}" for i in range(5))


def decode(example: dict[str, Any], where: str) -> set[str]:
    label = example.get("label")
    if label is None:
        return set()
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)  # a CSV cell
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(CHOICES):
        raise UserError(f"{where}: 'label' must be the index of the correct choice, 0 to "
                        f"{len(CHOICES) - 1}, got {label!r}")
    example["label"] = label
    return {"label"}


def answer(output: str, example: Mapping[str, Any]) -> str:
    index = pick_choice(output, [str(example[name]) for name in CHOICES])
    return "" if index is None else str(index)
