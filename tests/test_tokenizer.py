"""The embedded models' prompt tokenizer (``tokenizers`` alone) gives exactly the token ids and
chat text of ``transformers.AutoTokenizer``: cache keys, prompt lengths and the prompts the
engines see must not depend on which one loaded."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from promptsearch.pipelines.data.taskdata import load_task_data
from promptsearch.pipelines.engine.models import EMBEDDED_MODELS, resolve_model
from promptsearch.pipelines.engine.pool import prompt_token_ids
from promptsearch.pipelines.engine.tokenizer import PromptTokenizer, prompt_tokenizer
from promptsearch.pipelines.prompting.config import PromptConfig
from promptsearch.pipelines.prompting.prompts import render_requests
from promptsearch.pipelines.tasks import TASK_NAMES, load_task


def _prompts(chat: bool) -> list[object]:
    prompts: list[object] = ["", "こんにちは。\n\n質問: 日本の首都は？\n回答:", " <bos> literal"]
    for name in TASK_NAMES:
        task = load_task(name)
        data = load_task_data(task, None, seed=0)
        config = PromptConfig.baseline(task).model_copy(update={"chat": chat})
        prompts += render_requests(task, config, data.validation[:8], data.fewshot)
    return prompts


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_prompt_tokenizer_matches_transformers(name: str) -> None:
    directory = resolve_model(name)
    ours, theirs = prompt_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
    assert isinstance(ours, PromptTokenizer)
    assert ours.chat_template == theirs.chat_template
    assert ours.special_tokens_map == theirs.special_tokens_map
    prompts = _prompts(chat=False) + (_prompts(chat=True) if theirs.chat_template else [])
    assert any(not isinstance(p, str) for p in prompts) == (theirs.chat_template is not None)
    assert prompt_token_ids(ours, prompts) == prompt_token_ids(theirs, prompts)
    assert len(ours) == len(theirs)
    for text in [p for p in prompts if isinstance(p, str)][:20]:
        for special in (True, False):
            assert ours(text, add_special_tokens=special).input_ids == \
                theirs(text, add_special_tokens=special).input_ids


def test_other_models_load_through_transformers(tmp_path) -> None:
    """Without promptsearch's manifest the directory is not one it prepared: AutoTokenizer."""
    import shutil

    for file in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(resolve_model("gemma-3-270m") + "/" + file, tmp_path / file)
    assert not isinstance(prompt_tokenizer(str(tmp_path)), PromptTokenizer)
