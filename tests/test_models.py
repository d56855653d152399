"""Embedded models and `--model` resolution (no engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptsearch.pipelines.engine.models import (
    EMBEDDED_MODELS,
    MANIFEST,
    model_fingerprint,
    prepare_model,
    resolve_model,
)
from promptsearch.pipelines.errors import UserError
from tests.conftest import run_cli


def test_models_command_lists_both_with_their_state() -> None:
    result = run_cli("models")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("gemma-3-270m (default)\tprepared")
    assert lines[1].startswith("smollm2-135m-instruct\tprepared")


def test_prepare_is_idempotent_and_verified() -> None:
    result = run_cli("models", "--prepare", "all")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("already prepared") == 2
    for model in EMBEDDED_MODELS.values():
        manifest = json.loads((model.path / MANIFEST).read_text())
        assert manifest["gguf_sha256"] == model.sha256
    gemma = json.loads((EMBEDDED_MODELS["gemma-3-270m"].path / "tokenizer_config.json")
                       .read_text())
    assert gemma["add_bos_token"] is True
    assert (EMBEDDED_MODELS["smollm2-135m-instruct"].path / "chat_template.jinja").is_file() or \
        "chat_template" in json.loads((EMBEDDED_MODELS["smollm2-135m-instruct"].path
                                       / "tokenizer_config.json").read_text())


def test_a_gguf_that_does_not_match_its_pinned_hash_is_refused(tmp_path: Path,
                                                                monkeypatch) -> None:
    monkeypatch.setenv("PROMPTSEARCH_CACHE", str(tmp_path))
    model = EMBEDDED_MODELS["gemma-3-270m"]
    corrupt = model.gguf()  # assembled afresh under the empty cache
    assert corrupt.is_relative_to(tmp_path)
    with corrupt.open("r+b") as fh:
        fh.seek(1 << 20)
        fh.write(b"\0" * 16)
    with pytest.raises(UserError, match=f"SHA-256 .* does not match the expected {model.sha256}"):
        prepare_model("gemma-3-270m")
    assert not model.is_prepared()
    result = run_cli("models", env={"PROMPTSEARCH_CACHE": str(tmp_path)})
    assert result.stdout.splitlines()[0].startswith("gemma-3-270m (default)\tnot prepared")


def test_gemma_tokenizer_adds_bos() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(prepare_model("gemma-3-270m"))
    assert tok("日本").input_ids[0] == tok.bos_token_id


def test_local_directory_and_fingerprint(tmp_path: Path) -> None:
    path = prepare_model("gemma-3-270m")
    assert resolve_model(str(path)) == str(path.resolve())
    assert model_fingerprint("gemma-3-270m", str(path)).startswith("gemma-3-270m@")
    assert model_fingerprint(str(path), str(path)).startswith("gemma-3-270m@")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no config\.json"):
        resolve_model(str(tmp_path / "empty"))


def test_offline_hub_id_says_how_to_use_a_local_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"not reachable.*--model DIR"):
        resolve_model("google/gemma-3-1b-it")
    with pytest.raises(UserError, match="unknown model"):
        resolve_model("no-such-model")


def test_tasks_command_lists_tasks_templates_and_metrics() -> None:
    result = run_cli("tasks")
    assert result.returncode == 0, result.stderr
    for expected in ("qa (v1)", "template jglue-extract@v1 [text]", "summary (v1)",
                     "metrics: rouge1, rouge2, rougeL (primary: rougeL)", "instruct (v1)",
                     "template chat@v1 [chat]"):
        assert expected in result.stdout
