"""Task definitions, prompt rendering, parsing, few-shot selection and configs (no engine)."""

from __future__ import annotations

import json

import pytest

from promptsearch.pipelines.data.taskdata import load_task_data
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.prompting.config import FewShot, PromptConfig
from promptsearch.pipelines.prompting.fewshot import select_demos
from promptsearch.pipelines.prompting.parsing import parse_output
from promptsearch.pipelines.prompting.prompts import render_prompt, render_requests
from promptsearch.pipelines.prompting.render import render_template
from promptsearch.pipelines.tasks import TASK_NAMES, load_task


@pytest.mark.parametrize("name", TASK_NAMES)
def test_each_task_has_four_templates_a_chat_one_and_bundled_splits(name: str) -> None:
    task = load_task(name)
    assert len(task.templates) >= 4
    assert any(t.chat for t in task.templates.values())
    assert any("### 指示:" in t.example for t in task.templates.values())
    data = load_task_data(task)
    assert data.fewshot and data.validation and data.test
    ids = [task.example_id(e) for e in data.fewshot + data.validation + data.test]
    assert len(ids) == len(set(ids))


def test_qa_has_the_fields_well_known_template() -> None:
    task = load_task("qa")
    t = task.template("jglue-extract")
    assert t.instruction == "質問に対する回答を文章から一言で抽出してください。回答は名詞で答えてください。"
    example = {"id": "1", "context": "東京は日本の首都。", "question": "日本の首都は？",
               "answers": ["東京"]}
    config = PromptConfig.baseline(task)
    assert render_prompt(task, config, example) == (
        f"{t.instruction}\n\n文章:東京は日本の首都。\n質問:日本の首都は？\n回答:")


def test_fewshot_demos_render_with_answers_and_chat_turns() -> None:
    task = load_task("qa")
    demo = {"id": "d", "context": "富士山は高い。", "question": "高い山は？", "answers": ["富士山"]}
    query = {"id": "q", "context": "琵琶湖は広い。", "question": "広い湖は？", "answers": ["琵琶湖"]}
    text = render_prompt(task, PromptConfig(task="qa", template="plain"), query, [demo])
    assert text == "富士山は高い。\n質問: 高い山は？\n答え: 富士山\n\n琵琶湖は広い。\n質問: 広い湖は？\n答え:"
    messages = render_prompt(task, PromptConfig(task="qa", template="chat"), query, [demo])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == "富士山"
    wrapped = render_prompt(task, PromptConfig(task="qa", template="plain", chat=True), query)
    assert wrapped == [{"role": "user", "content": "琵琶湖は広い。\n質問: 広い湖は？\n答え:"}]


@pytest.mark.parametrize("payload", [
    "{{ 7 * 7 }}", "{% for x in range(3) %}x{% endfor %}", "{{ ''.__class__.__mro__ }}",
    "{{ config }}", "{% include '/etc/passwd' %}",
])
def test_dataset_text_is_rendered_as_text_never_executed(payload: str) -> None:
    task = load_task("qa")
    example = {"id": "1", "context": payload, "question": payload, "answers": ["x"]}
    text = render_prompt(task, PromptConfig.baseline(task), example)
    assert text.count(payload) == 2
    assert "49" not in text or "49" in payload


def test_template_reaching_python_internals_is_refused() -> None:
    with pytest.raises(UserError, match="unsafe template"):
        render_template("{{ x.__class__.__mro__[1].__subclasses__() }}", {"x": "a"})
    with pytest.raises(UserError, match=r"unknown field|undefined"):
        render_template("{{ missing }}", {"x": "a"}, name="t")


def test_parse_steps() -> None:
    assert parse_output(" 回答：東京です。\n次の質問", ["strip_prefix", "first_line",
                                                    "until_period"]) == "東京です"
    assert parse_output("\n\n  要約: 記事の要点。\n", ["strip_prefix", "first_line"]) == "記事の要点。"
    assert parse_output("「東京」", ["strip_quotes"]) == "東京"
    assert parse_output("A: Tokyo", ["strip_prefix"]) == "Tokyo"


def test_fewshot_selectors() -> None:
    pool = [{"id": str(i), "text": t} for i, t in enumerate(
        ["猫が好きです", "犬と散歩する", "東京の天気は晴れ", "大阪の天気は雨", "猫と犬"])]
    kw = {"fields": ["text"], "id_field": "id", "order": "as_selected", "seed": 0}
    query = {"id": "q", "text": "明日の東京の天気"}
    assert [d["id"] for d in select_demos(query, pool, k=2, selector="first", **kw)] == ["0", "1"]
    similar = select_demos(query, pool, k=2, selector="similar", **kw)
    assert similar[0]["id"] == "2" and similar[1]["id"] == "3"
    reversed_ = select_demos(query, pool, k=2, selector="similar", **{**kw, "order": "reversed"})
    assert [d["id"] for d in reversed_] == ["3", "2"]
    a = select_demos(query, pool, k=3, selector="random", **kw)
    b = select_demos({"id": "other", "text": "x"}, pool, k=3, selector="random", **kw)
    assert a == b  # one seeded set shared by every query
    c = select_demos(query, pool, k=3, selector="random", **{**kw, "seed": 7})
    assert a != c
    assert all(d["id"] != "0" for d in select_demos({"id": "0", "text": "猫が好きです"}, pool,
                                                   k=4, selector="similar", **kw))
    with pytest.raises(UserError, match="larger than the pool"):
        select_demos(query, pool, k=9, selector="first", **kw)


def test_instruct_demos_only_from_rows_with_responses() -> None:
    task = load_task("instruct")
    data = load_task_data(task)
    config = PromptConfig(task="instruct", template="plain", fewshot=FewShot(k=2))
    prompt = render_requests(task, config, data.validation[:1], data.fewshot)[0]
    assert data.fewshot[0]["response"] in prompt


def test_config_round_trip_and_validation(tmp_path) -> None:
    task = load_task("summary")
    config = PromptConfig.baseline(task).replace(fewshot=FewShot(k=2, selector="similar"))
    path = tmp_path / "best.yaml"
    config.save(path)
    assert PromptConfig.load(path) == config
    path.write_text("task: summary\ntemplate: nope\n")
    with pytest.raises(UserError, match="unknown template 'nope'"):
        PromptConfig.load(path)
    path.write_text("task: summary\ntemplate: summarize\nfewshot: {k: 2, selector: best}\n")
    with pytest.raises(UserError, match=r"unknown fewshot\.selector 'best'"):
        PromptConfig.load(path)
    path.write_text("task: summary\ntemplate: [unclosed\n")
    with pytest.raises(UserError, match=r"best.yaml line 3 column 1: invalid YAML"):
        PromptConfig.load(path)
    with pytest.raises(UserError, match="only 8 examples"):
        config.replace(fewshot=FewShot(k=50)).check(task, pool_size=8)
    with pytest.raises(UserError, match="chat template"):
        config.replace(template="chat").check(task, has_chat_template=False)


def test_missing_data_file_is_not_mistaken_for_a_hub_id() -> None:
    with pytest.raises(UserError, match="file not found"):
        load_task_data(load_task("qa"), "data/missing.jsonl")
    with pytest.raises(UserError, match="Hugging Face hub"):
        load_task_data(load_task("qa"), "someone/some-dataset")


@pytest.mark.parametrize(("row", "message"), [
    ({"key": 1, "prompt": "p", "instruction_id_list": ["ja:keywords:nope"], "kwargs": [{}]},
     "line 1 (key 1): instruction_id_list[0]: unknown instruction id 'ja:keywords:nope'"),
    ({"key": 1, "prompt": "p", "instruction_id_list": ["ja:length_constraints:number_letters"],
      "kwargs": [{"relation": "以上", "num_letters": "六百"}]},
     "line 1 (key 1): kwargs[0]: ja:length_constraints:number_letters: kwarg 'num_letters' "
     "must be"),
    ({"key": 1, "instruction_id_list": [], "kwargs": []}, "line 1: missing field 'prompt'"),
    ({"key": 1, "prompt": "p", "instruction_id_list": [], "kwargs": []},
     "line 1 (key 1): 'instruction_id_list' is empty; give at least one instruction id"),
])
def test_bad_instruct_rows_name_the_row(tmp_path, row: dict, message: str) -> None:
    from promptsearch.pipelines.data.taskdata import load_examples

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_examples(load_task("instruct"), path)
    assert message in str(info.value)


def test_bad_qa_rows_and_empty_split_name_the_problem(tmp_path) -> None:
    from promptsearch.pipelines.data.taskdata import load_examples

    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"id": "1", "context": "c", "question": "q"}) + "\n")
    with pytest.raises(UserError, match="line 1 \\(id 1\\): missing required field 'answers'"):
        load_examples(load_task("qa"), path)
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    (split_dir / "validation.jsonl").write_text(
        json.dumps({"id": "1", "context": "c", "question": "q", "answers": ["c"]}) + "\n")
    (split_dir / "test.jsonl").write_text("\n")
    with pytest.raises(UserError, match=r"test\.jsonl: the file has no records"):
        load_task_data(load_task("qa"), split_dir)


def test_search_space_with_a_user_template_round_trips_through_best_yaml(tmp_path) -> None:
    import yaml

    from promptsearch.search.space import SearchSpace

    task = load_task("qa")
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "templates": ["mine", "plain"],
        "extra_templates": {"mine": {"example": "Q: {{ question }}\\nC: {{ context }}\\nA:",
                                     "answer": " {{ answers[0] }}"}},
        "fewshot": {"k": [0, 1]}, "sampling": {"max_tokens": [32], "stop": {"nl": ["\\n"]}},
        "parse": {"extract": ["strip_prefix", "first_line", "until_period"]}}))
    space = SearchSpace.load(task, path)
    config = space.to_config(task, {"template": "mine", "k": 1, "selector": "first",
                                    "order": "as_selected", "temperature": 0.0,
                                    "max_tokens": 32, "repetition_penalty": 1.0, "stop": "nl",
                                    "parse": "extract", "chat": False})
    example = {"id": "q", "context": "C1", "question": "Q1", "answers": ["A1"]}
    demo = {"id": "d", "context": "C0", "question": "Q0", "answers": ["A0"]}
    assert render_prompt(task, config, example, [demo]) == "Q: Q0\\nC: C0\\nA: A0\n\nQ: Q1\\nC: C1\\nA:"
    config.save(tmp_path / "best.yaml")
    assert PromptConfig.load(tmp_path / "best.yaml") == config
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"extra_templates": {"x": {"example": "{{ title }}"}},
                                   "templates": ["x"]}))
    with pytest.raises(UserError, match="reads unknown field 'title'"):
        SearchSpace.load(task, bad)


def _write_csv(path, header: list[str], *rows: list[object]):
    import csv

    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([json.dumps(c, ensure_ascii=False) if isinstance(c, list) else c
                          for c in row] for row in rows)
    return path


INSTRUCT_COLUMNS = ["key", "prompt", "instruction_id_list", "kwargs"]
LETTERS = "ja:length_constraints:number_letters"


def test_instruct_csv_cells_are_json_decoded(tmp_path) -> None:
    from promptsearch.pipelines.data.taskdata import load_examples

    path = _write_csv(tmp_path / "refs.csv", INSTRUCT_COLUMNS,
                      [7, "300文字以上で", [LETTERS], [{"relation": "以上", "num_letters": 300}]],
                      [8, "カタカナなしで", ["ja:letters:no_katakana"], [{}]])
    rows = load_examples(load_task("instruct"), path)
    assert [r["instruction_id_list"] for r in rows] == [[LETTERS], ["ja:letters:no_katakana"]]
    assert rows[0]["kwargs"] == [{"relation": "以上", "num_letters": 300}]


@pytest.mark.parametrize(("ids", "kwargs", "message"), [
    ([LETTERS], [{"relation": "以上", "num_letters": "六百"}],
     f"refs.csv row 1 (key 7): kwargs[0]: {LETTERS}: kwarg 'num_letters' must be a non-negative"),
    ([LETTERS], [{"relation": "以上", "letters": 300}],
     f"refs.csv row 1 (key 7): kwargs[0]: {LETTERS}: unexpected kwarg 'letters'"),
    (["ja:keywords:nope"], [{}],
     "refs.csv row 1 (key 7): instruction_id_list[0]: unknown instruction id 'ja:keywords:nope'"),
    ([LETTERS, "ja:letters:no_katakana"], [{"relation": "以上", "num_letters": 3}],
     "refs.csv row 1 (key 7): 'instruction_id_list' has 2 entries but 'kwargs' has 1"),
    ([], [], "refs.csv row 1 (key 7): 'instruction_id_list' is empty"),
    ("ja:letters:no_katakana", [{}],
     "refs.csv row 1 (key 7): 'instruction_id_list' is text that is not valid JSON"),
    ([LETTERS], {"relation": "以上", "num_letters": 3},
     "refs.csv row 1 (key 7): 'kwargs' must be a list of objects"),
])
def test_bad_instruct_csv_cells_name_the_row_and_field(tmp_path, ids: object, kwargs: object,
                                                       message: str) -> None:
    from promptsearch.pipelines.data.taskdata import load_examples

    kwargs_cell = json.dumps(kwargs, ensure_ascii=False)
    path = _write_csv(tmp_path / "refs.csv", INSTRUCT_COLUMNS, [7, "p", ids, kwargs_cell])
    with pytest.raises(UserError) as info:
        load_examples(load_task("instruct"), path)
    assert message in str(info.value)


def test_instruct_parquet_and_field_mapped_jsonl_are_checked(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from promptsearch.pipelines.data.taskdata import load_examples

    bad = {"key": 7, "prompt": "p", "instruction_id_list": [LETTERS],
           "kwargs": [{"relation": "以上", "num_letters": "六百"}]}
    pq.write_table(pa.Table.from_pylist([bad]), tmp_path / "refs.parquet")
    with pytest.raises(UserError, match=r"refs\.parquet row 1 \(key 7\): kwargs\[0\]: .*'num_"):
        load_examples(load_task("instruct"), tmp_path / "refs.parquet")
    mapped = {**bad, "question": bad["prompt"]}
    del mapped["prompt"]
    (tmp_path / "refs.jsonl").write_text(json.dumps(mapped) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"refs\.jsonl line 1 \(key 7\): kwargs\[0\]: .*'num_"):
        load_examples(load_task("instruct"), tmp_path / "refs.jsonl",
                      field_map={"prompt": "question"})


def test_qa_answers_from_csv_text_and_bad_answers_name_the_row(tmp_path) -> None:
    from promptsearch.pipelines.data.taskdata import load_examples

    task = load_task("qa")
    path = _write_csv(tmp_path / "qa.csv", ["id", "context", "question", "answers"],
                      ["a", "c", "q", ["東京", "とうきょう"]], ["b", "c", "q", "大阪"],
                      ["c", "c", "q", "[大阪"])
    rows = load_examples(task, path)
    assert [r["answers"] for r in rows] == [["東京", "とうきょう"], ["大阪"], ["[大阪"]]
    for answers in ([1, 2], [], ["東京", ""], {"answer": ["東京"]}, '["東京", 2]'):
        path = tmp_path / "qa.jsonl"
        path.write_text(json.dumps({"id": "x", "context": "c", "question": "q",
                                    "answers": answers}, ensure_ascii=False) + "\n")
        with pytest.raises(UserError, match=r"qa\.jsonl line 1 \(id x\): 'answers' must be a "
                                            "non-empty list of non-empty strings"):
            load_examples(task, path)


def test_references_in_prediction_rows_are_decoded_and_checked(tmp_path) -> None:
    from promptsearch.pipelines.data.predictions import match_predictions

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "output": "東京", "context": "c", "question": "q",
                                "answers": '["東京"]'}, ensure_ascii=False) + "\n")
    examples, outputs = match_predictions(load_task("qa"), path, None)
    assert examples[0]["answers"] == ["東京"] and outputs == ["東京"]
    path.write_text(json.dumps({"id": "a", "output": "x", "context": "c", "question": "q",
                                "answers": [1, 2]}) + "\n")
    with pytest.raises(UserError, match=r"p\.jsonl line 1 \(no --references given\): 'answers'"):
        match_predictions(load_task("qa"), path, None)
    path.write_text(json.dumps({"id": "k", "output": "x", "prompt": "p",
                                "instruction_id_list": [LETTERS],
                                "kwargs": [{"relation": "以上", "num_letters": -1}]}) + "\n")
    with pytest.raises(UserError, match=r"p\.jsonl line 1 \(no --references given\): kwargs\[0\]"):
        match_predictions(load_task("instruct"), path, None)


@pytest.mark.parametrize(("source", "tag"), [
    ("{% include 'header.txt' %}{{ question }}", "{% include %}"),
    ("{{ question }}\n{% import 'macros' as m %}", "{% import %}"),
    ("{% from 'macros' import m %}{{ question }}", "{% from ... import %}"),
    ("{% extends 'base' %}", "{% extends %}"),
])
def test_template_loading_other_templates_is_refused(source: str, tag: str) -> None:
    from promptsearch.pipelines.prompting.render import compile_template

    with pytest.raises(UserError) as info:
        compile_template(source, name="space.yaml: template 'mine'")
    assert str(info.value).startswith("space.yaml: template 'mine' line ")
    assert f"{tag} is not supported" in str(info.value)


@pytest.mark.parametrize(("source", "problem"), [
    ("{% for i in range(10**12) %}{% endfor %}{{ question }}", "OverflowError"),
    ("{{ question + 1 }}", "TypeError"),
    ("{{ question|format(1, 2) }}", "TypeError"),
    ("{{ 1 // 0 }}", "ZeroDivisionError"),
])
def test_template_failing_while_rendering_names_template_and_example(source: str,
                                                                     problem: str) -> None:
    with pytest.raises(UserError) as info:
        render_template(source, {"id": "q-7", "question": "質問"}, name="template mine@v1")
    message = str(info.value)
    assert message.startswith(f"template mine@v1 (example q-7): the template failed ({problem}")
    assert "\n" not in message


@pytest.mark.parametrize("source", ["{{ 2 ** 100000000 }}", "{{ 'あ' * 10**12 }}",
                                    "{{ [question] * 10**9 }}"])
def test_template_building_something_huge_is_refused_not_hung(source: str) -> None:
    with pytest.raises(UserError, match=r"^template mine@v1 \(example q-7\): unsafe template"):
        render_template(source, {"id": "q-7", "question": "質問"}, name="template mine@v1")
    assert render_template("{{ '-' * 3 }}{{ 2 ** 10 }}", {}) == "---1024"


def test_a_number_in_a_text_field_names_the_row_and_field(tmp_path) -> None:
    from promptsearch.pipelines.data.taskdata import load_examples

    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "a", "text": "本文です。", "summary": "要約"}\n'
                    '{"id": "b", "text": "本文です。", "summary": 42}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"s\.jsonl line 2 \(id b\): field 'summary' must be "
                                        r"text, got int '42'"):
        load_examples(load_task("summary"), path)
