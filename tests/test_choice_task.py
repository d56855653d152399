"""Tasks own what differs: the metric registry, the `choice` task (JCommonsenseQA format), the
task YAML as a typed model, `run --metric` and the zero-shot fallback of a pool without answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptsearch.pipelines.data.taskdata import load_examples, load_task_data
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.evaluate import score_rows
from promptsearch.pipelines.metrics import METRICS, get_metric, register_metric
from promptsearch.pipelines.prompting.parsing import pick_choice
from promptsearch.pipelines.tasks import TASK_DIR, TASK_NAMES, load_task
from promptsearch.pipelines.tasks.task import load_task_file
from tests.conftest import run_cli

CHOICES = ["ドライヤー", "タオル", "扇風機", "冷蔵庫", "電子レンジ"]
ROW = {"q_id": 1, "question": "髪を乾かす電気製品は？",
       **{f"choice{i}": c for i, c in enumerate(CHOICES)}, "label": 0}


# -- the registry ---------------------------------------------------------------------------
def test_every_task_metric_is_registered_and_takes_prediction_then_reference() -> None:
    for name in TASK_NAMES:
        task = load_task(name)
        assert task.primary_metric in task.metrics
        for metric in task.metrics:
            assert metric in METRICS, (name, metric)
    assert METRICS["exact_match"].score("東京", ["東京", "とうきょう"]) == 100.0
    assert METRICS["char_f1"].score("東京都", ["東京"]) == pytest.approx(80.0)
    assert METRICS["rouge1"].score("今日は晴れ", "今日は晴れ") == 100.0
    assert METRICS["rougeL"].score("", "今日は晴れ") == 0.0
    assert METRICS["accuracy"].score("2", 2) == 100.0
    assert METRICS["accuracy"].score("3", 2) == 0.0


def test_an_unknown_metric_lists_the_known_ones_and_a_name_registers_once() -> None:
    with pytest.raises(UserError, match=r"unknown metric 'bleu'; known: .*exact_match"):
        get_metric("bleu")
    with pytest.raises(UserError, match=r"known: accuracy$"):
        get_metric("char_f1", among=["accuracy"])
    with pytest.raises(ValueError, match="registered twice"):
        register_metric("accuracy", description="another")(lambda p, r: 0.0)


def test_instruct_row_metrics_and_split_level_match_the_ifeval_definitions() -> None:
    from promptsearch.pipelines.ifeval import aggregate, evaluate_response

    task = load_task("instruct")
    example = {"key": "1", "prompt": "p", "instruction_id_list":
               ["ja:punctuation:no_comma", "ja:detectable_format:title"], "kwargs": [{}, {}]}
    responses = ["『題』\n文です", "文、です", "文です", "**『題』**\n文、です\n"]
    rows = [task.score_row(r, example) for r in responses]
    verdicts = [evaluate_response(r, example["instruction_id_list"], example["kwargs"])
                for r in responses]
    for row, row_verdicts in zip(rows, verdicts, strict=True):
        assert {m: row[m] for m in task.metrics} == aggregate([row_verdicts])
        assert row["instructions"] == [{"instruction_id": v.instruction_id, "strict": v.strict,
                                        "loose": v.loose} for v in row_verdicts]
    assert task.aggregate(rows) == aggregate(verdicts)
    assert {row["inst_level_strict_acc"] for row in rows} >= {0.0, 50.0}


# -- the choice parser and accuracy ---------------------------------------------------------
@pytest.mark.parametrize(("text", "index"), [
    ("タオル", 1), ("「扇風機」。", 2),                  # the exact text of a choice
    ("2", 2), ("２. 扇風機", 2), ("(4)", 4), ("3番", 3),  # a leading index
    ("答えは冷蔵庫です", 3),                             # a choice inside the text
    ("ドライヤ", 0), ("でんしレンジ", 4),                # the most shared characters
    ("", None), ("xyz", None), ("7", None), ("10", None),
])
def test_pick_choice(text: str, index: int | None) -> None:
    assert pick_choice(text, CHOICES) == index


def test_choice_answers_are_indices_and_mapping_an_index_keeps_it() -> None:
    task = load_task("choice")
    assert task.answer("ドライヤーです", ROW) == "0"
    assert task.answer("0", ROW) == "0"
    assert task.answer("ほげ", ROW) == ""
    assert task.read_answer("回答：2\n次の質問", ["strip_prefix", "first_line"], ROW) == "2"
    rows, metrics = score_rows(task, [ROW, {**ROW, "q_id": 2, "label": 3}, ROW],
                               ["ドライヤー", "冷蔵庫", "4"])
    assert [r["accuracy"] for r in rows] == [100.0, 100.0, 0.0]
    assert metrics == {"accuracy": pytest.approx(200 / 3)}


def test_choice_task_data_templates_and_space() -> None:
    task = load_task("choice")
    data = load_task_data(task)
    rows = data.fewshot + data.validation + data.test
    assert len(rows) >= 40 and len(data.fewshot) >= 5
    assert {r["label"] for r in data.validation} == {0, 1, 2, 3, 4}
    for row in rows:
        choices = [row[f"choice{i}"] for i in range(5)]
        assert len(set(choices)) == 5 and not any(c.isdigit() for c in choices)
        assert pick_choice(choices[row["label"]], choices) == row["label"]
    assert {"jcqa-index", "chat"} <= set(task.templates)
    assert (TASK_DIR / "choice.space.yaml").is_file()
    listed = run_cli("tasks")
    assert "choice (v1)" in listed.stdout and "metrics: accuracy (primary: accuracy)" \
        in listed.stdout


def test_choice_rows_from_csv_decode_the_label_and_bad_labels_name_the_row(tmp_path) -> None:
    task = load_task("choice")
    header = "q_id,question,choice0,choice1,choice2,choice3,choice4,label\n"
    (tmp_path / "ok.csv").write_text(header + "7,問い,あ,い,う,え,お,3\n", encoding="utf-8")
    assert load_examples(task, tmp_path / "ok.csv")[0]["label"] == 3
    (tmp_path / "bad.csv").write_text(header + "7,問い,あ,い,う,え,お,5\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.csv (line|row) \d \(q_id 7\): 'label' must be the "
                                        r"index of the correct choice, 0 to 4, got 5"):
        load_examples(task, tmp_path / "bad.csv")
    (tmp_path / "x.json").write_text("{}", encoding="utf-8")
    with pytest.raises(UserError, match=r"task choice does not read \.json files"):
        load_examples(task, tmp_path / "x.json")


# -- the task YAML is a typed model ---------------------------------------------------------
@pytest.mark.parametrize(("change", "message"), [
    ({"metric": "accuracy"}, "choice.yaml: unknown field 'metric'; allowed: answer_field"),
    ({"metrics": ["accuracy", "bleu"]}, "metrics: unknown metric 'bleu'; registered: "),
    ({"primary_metric": "char_f1"}, "primary_metric 'char_f1' is not in metrics"),
    ({"version": "1"}, "version must be an integer"),
    ({"parse": ["strip", "trim"]}, "unknown parse step 'trim'"),
    ({"templates": {"t": {"example": "{{ question }}", "answr": "x"}}},
     "template 't' has unknown field 'answr'; allowed: answer, chat"),
    ({"templates": {"t": {"example": "{{ questoin }}"}}},
     "template 't' reads unknown field 'questoin'"),
])
def test_a_bad_task_yaml_is_one_line_naming_the_field(tmp_path, change: dict,
                                                      message: str) -> None:
    import yaml

    data = yaml.safe_load((TASK_DIR / "choice.yaml").read_text(encoding="utf-8"))
    path = tmp_path / "choice.yaml"
    path.write_text(yaml.safe_dump({**data, **change}, allow_unicode=True), encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_task_file(path)
    assert message in str(info.value) and "\n" not in str(info.value)


# -- run --metric, and a few-shot pool without answers ---------------------------------------
def test_run_with_an_unknown_metric_lists_the_tasks_metrics() -> None:
    result = run_cli("run", "--task", "instruct", "--metric", "rougeL")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --metric rougeL: task instruct has no such metric; its metrics: "
        "prompt_level_strict_acc, inst_level_strict_acc, prompt_level_loose_acc, "
        "inst_level_loose_acc")


def _mifeval_input(path: Path) -> Path:
    """M-IFEval's own input format: key, prompt, instruction_id_list, kwargs (no answers)."""
    rows = []
    for split in ("fewshot", "validation", "test"):
        for line in (TASK_DIR / "data/instruct" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            rows.append({k: row[k] for k in ("key", "prompt", "instruction_id_list", "kwargs")})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


SMALL_INSTRUCT_SPACE = """\
templates: [plain, careful]
fewshot: {k: [0, 2]}
sampling: {stop: {none: [], paragraph: ["\\n\\n"]}}
"""


@pytest.mark.engine
def test_metric_chooses_what_is_maximised_and_a_pool_without_answers_runs_zero_shot(
        tmp_path: Path) -> None:
    data = _mifeval_input(tmp_path / "ja_input_data.jsonl")
    (tmp_path / "space.yaml").write_text(SMALL_INSTRUCT_SPACE, encoding="utf-8")
    out = tmp_path / "run"
    result = run_cli("run", "--task", "instruct", "--data", str(data), "--space",
                     str(tmp_path / "space.yaml"), "--metric", "inst_level_loose_acc",
                     "--trials", "2", "--chunks", "1", "--max-validation", "3",
                     "--max-test", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "no few-shot example has an answer ('response'), so the search runs zero-shot " \
           "(fewshot.k=0)" in result.stderr
    assert "only 0 examples" not in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "inst_level_loose_acc"
    assert "instruct inst_level_loose_acc" in result.stdout
    best = summary["best"]
    assert best["validation"] == best["metrics_validation"]["inst_level_loose_acc"]
    assert best["test"] == best["metrics_test"]["inst_level_loose_acc"]
    import pyarrow.parquet as pq

    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert trials and all(t["config"]["fewshot"]["k"] == 0 for t in trials)
    assert "metric: inst_level_loose_acc" in (out / "run.yaml").read_text()


@pytest.mark.engine
def test_run_choice_and_recompute_accuracy_from_the_saved_predictions(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("run", "--task", "choice", "--trials", "2", "--max-validation", "8",
                     "--max-test", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "accuracy"
    for split in ("validation", "test"):
        rows = [json.loads(line) for line in
                (out / "predictions" / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == 8
        assert all(r["output"] in {"", "0", "1", "2", "3", "4"} for r in rows)
        recomputed = 100 * sum(r["output"] == str(r["label"]) for r in rows) / len(rows)
        assert summary["best"][f"metrics_{split}"]["accuracy"] == pytest.approx(recomputed)
        score = run_cli("score", "--task", "choice", "--predictions",
                        str(out / "predictions" / f"{split}.jsonl"))
        assert json.loads(score.stdout) == {"accuracy": pytest.approx(recomputed)}
