"""`eval` on the real engine for every task and on JSQuAD; `score` recomputes the same figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptsearch.pipelines.data.taskdata import load_task_data
from promptsearch.pipelines.data.writers import write_table
from promptsearch.pipelines.evaluate import evaluate, is_judged
from promptsearch.pipelines.prompting.config import FewShot, PromptConfig
from promptsearch.pipelines.tasks import TASK_NAMES, load_task
from tests.conftest import JSQUAD, run_cli


def _rescore(task: str, predictions: Path, *extra: str) -> dict[str, float]:
    result = run_cli("score", "--task", task, "--predictions", str(predictions), *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.engine
@pytest.mark.parametrize("task_name", [t for t in TASK_NAMES if not is_judged(load_task(t))])
def test_eval_bundled_validation_and_rescore(pool, tmp_path: Path, task_name: str) -> None:
    task = load_task(task_name)
    data = load_task_data(task)
    config = PromptConfig.baseline(task).replace(
        fewshot=FewShot(k=1), sampling=task.sampling.__class__(
            **{**task.sampling.to_dict(), "max_tokens": min(task.sampling.max_tokens, 96)}))
    examples = data.validation[:8]
    result = evaluate(task, config, examples, pool=pool, fewshot=data.fewshot)
    assert set(result.metrics) == set(task.metrics)
    assert len(result.rows) == len(examples) and result.generations == len(examples)
    assert sum(bool(r["raw_output"]) for r in result.rows) >= len(examples) // 2
    parquet, jsonl = write_table(tmp_path / "predictions" / "validation", result.rows)
    for path in (parquet, jsonl):
        assert _rescore(task_name, path) == pytest.approx(result.metrics)


@pytest.mark.engine
def test_eval_jsquad_two_shot_scores_above_zero_and_rescores(pool, tmp_path: Path) -> None:
    task = load_task("qa")
    data = load_task_data(task, JSQUAD, max_validation=24)
    assert {e["title"] for e in data.fewshot}.isdisjoint({e["title"] for e in data.validation})
    config = PromptConfig.baseline(task).replace(fewshot=FewShot(k=2))
    result = evaluate(task, config, data.validation, pool=pool, fewshot=data.fewshot)
    assert result.metrics["char_f1"] > 0
    _, jsonl = write_table(tmp_path / "validation", result.rows)
    assert _rescore("qa", jsonl) == pytest.approx(result.metrics)


# (task, --data, split, k): every task on its bundled data, and JSQuAD from ../shared
EVAL_COMMANDS = [("qa", None, "test", 2), ("summary", None, "test", 1),
                 ("instruct", None, "test", 0), ("qa", str(JSQUAD), "validation", 2)]


@pytest.mark.engine
@pytest.mark.parametrize(("task_name", "data", "split", "k"), EVAL_COMMANDS,
                         ids=["qa", "summary", "instruct", "jsquad"])
def test_eval_command_with_a_config_file(tmp_path: Path, task_name: str, data: str | None,
                                         split: str, k: int) -> None:
    task = load_task(task_name)
    config = PromptConfig.baseline(task).replace(template=list(task.templates)[1],
                                                 fewshot=FewShot(k=k))
    config = config.replace(sampling=config.sampling.__class__(
        **{**config.sampling.to_dict(), "max_tokens": min(config.sampling.max_tokens, 64)}))
    config.save(tmp_path / "best.yaml")
    n = 6
    result = run_cli("eval", "--task", task_name, "--config", str(tmp_path / "best.yaml"),
                     "--split", split, "--max-examples", str(n), "--out", str(tmp_path / "run"),
                     *(["--data", data] if data else []))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    saved = json.loads((tmp_path / "run/metrics.json").read_text())
    assert saved["metrics"] == printed and saved["config"] == config.to_dict()
    assert set(printed) == set(task.metrics)
    predictions = tmp_path / f"run/predictions/{split}.jsonl"
    parquet = predictions.with_suffix(".parquet")
    assert len(predictions.read_text().splitlines()) == n and parquet.is_file()
    for path in (predictions, parquet):  # the rows hold their references
        assert _rescore(task_name, path) == pytest.approx(printed)
    if data is None:  # and against the bundled split file, matched by id
        refs = Path(__file__).resolve().parents[1] / f"pipelines/tasks/data/{task_name}/{split}.jsonl"
        id_field = "key" if task_name == "instruct" else "id"
        ids = {json.loads(line)["id"] for line in predictions.read_text().splitlines()}
        rows = [line for line in refs.read_text().splitlines()
                if str(json.loads(line)[id_field]) in ids]
        (tmp_path / "refs.jsonl").write_text("\n".join(rows) + "\n")
        assert _rescore(task_name, predictions, "--references", str(tmp_path / "refs.jsonl")) \
            == pytest.approx(printed)


def test_a_config_records_its_template_version(tmp_path: Path) -> None:
    from promptsearch.pipelines.errors import UserError

    config = PromptConfig.baseline(load_task("qa"))
    config.save(tmp_path / "best.yaml")
    text = (tmp_path / "best.yaml").read_text()
    assert "template_version: 1" in text
    assert PromptConfig.load(tmp_path / "best.yaml") == config
    (tmp_path / "old.yaml").write_text(text.replace("template_version: 1", "template_version: 0"))
    with pytest.raises(UserError, match="was version 0 when this config was made; this "
                                        "promptsearch has version 1"):
        PromptConfig.load(tmp_path / "old.yaml")


def test_eval_bad_config_fails_before_any_engine(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("task: qa\ntemplate: jglue-extract\nfewshot: {k: 500}\n")
    result = run_cli("eval", "--task", "qa", "--config", str(tmp_path / "c.yaml"))
    assert result.returncode == 2
    assert "fewshot.k=500 but the few-shot pool has only 23" in result.stderr
