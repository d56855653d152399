"""``prompt_tokenizer``: the prompt tokenizer of a model, for cache keys, prompt lengths and
chat templates on the driver and the search's evaluator.

``transformers.AutoTokenizer`` takes about 4 s and 1 GB to load gemma's 262k-token
``tokenizer.json`` (it parses the file in Python, then converts it); the ``tokenizers``
library reads the same file natively in under a second. The embedded models, whose files
promptsearch prepares itself and whose token ids the test suite compares with
``AutoTokenizer``'s, are loaded that way; any other model through ``AutoTokenizer``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptsearch.pipelines.engine.models import MANIFEST

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                  "mask_token")
"""The names a chat template may read (``transformers``' ``special_tokens_map``)."""


@dataclass
class Encoded:
    input_ids: list[Any]
    """One list of ids per text; the ids themselves for a single text."""


class PromptTokenizer:
    """The part of a ``transformers`` tokenizer promptsearch uses, on ``tokenizers`` alone:
    ``chat_template``, ``apply_chat_template(messages, tokenize=False, ...)``,
    ``tokenizer(text or texts, add_special_tokens=...).input_ids`` and ``len``."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        jinja = directory / "chat_template.jinja"
        self.chat_template: str | None = jinja.read_text(encoding="utf-8") \
            if jinja.is_file() else config.get("chat_template")
        self.special_tokens_map = {
            name: value["content"] if isinstance(value, dict) else value
            for name in SPECIAL_TOKENS if (value := config.get(name)) is not None}

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], *, tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        if tokenize:
            raise NotImplementedError("PromptTokenizer renders chat templates as text only")
        if self.chat_template is None:
            raise ValueError("this model has no chat template")
        rendered, _ = render_jinja_template(
            conversations=[list(messages)], chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt, **self.special_tokens_map)
        return rendered[0]

    def __call__(self, texts: str | Sequence[str], *,
                 add_special_tokens: bool = True) -> Encoded:
        if isinstance(texts, str):
            return Encoded(self._tokenizer.encode(
                texts, add_special_tokens=add_special_tokens).ids)
        encodings = self._tokenizer.encode_batch(list(texts),
                                                 add_special_tokens=add_special_tokens)
        return Encoded([e.ids for e in encodings])

    def __len__(self) -> int:
        """The vocabulary, added tokens included (what ``len(AutoTokenizer)`` gives)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)


@functools.lru_cache(maxsize=4)
def prompt_tokenizer(model: str) -> Any:
    """Once per process (a reused trial actor unpickles the pool for every trial). ``model``:
    a resolved model directory or hub id."""
    path = Path(model)
    if (path / MANIFEST).is_file() and (path / "tokenizer.json").is_file():
        return PromptTokenizer(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)
