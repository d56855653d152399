"""Record reader, dataset loaders and the few-shot/validation/test split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from promptsearch.pipelines.data.datasets import (
    decode_answers,
    decode_instructions,
    load_hf_dataset,
    load_jsquad,
    load_mifeval,
    load_table,
    split_records,
)
from promptsearch.pipelines.data.readers import read_records
from promptsearch.pipelines.errors import UserError

JSQUAD = Path(__file__).resolve().parents[2] / "shared/data/jsquad/valid-v1.3.json"


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


# --- read_records ---------------------------------------------------------------------------


def test_read_jsonl_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": 1, "q": "質問", "a": ["答え"]}\n\n  \n{"id": 2, "q": null}\n', "utf-8")
    assert read_records(path) == [
        {"id": 1, "q": "質問", "a": ["答え"]},
        {"id": 2, "q": None},
    ]


def test_read_jsonl_keeps_line_separator_characters_inside_strings(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"q": "前\u2028後"}\r\n{"q": "次"}\r\n', "utf-8")
    assert read_records(str(path)) == [{"q": "前\u2028後"}, {"q": "次"}]


def test_read_jsonl_with_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes('{"q": "東京"}\n'.encode("utf-8-sig"))
    assert read_records(path) == [{"q": "東京"}]


def test_read_parquet_keeps_lists(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    table = pa.table({"id": ["a", "b"], "answers": [["東京", "とうきょう"], []], "n": [1, None]})
    pq.write_table(table, path)
    assert read_records(path) == [
        {"id": "a", "answers": ["東京", "とうきょう"], "n": 1},
        {"id": "b", "answers": [], "n": None},
    ]


def test_read_csv_as_text_with_empty_cells_none(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('id,question,answer\n007,"東京は、どこ?",東京\n008,大阪,\n', "utf-8")
    rows = read_records(path)
    assert rows == [
        {"id": "007", "question": "東京は、どこ?", "answer": "東京"},
        {"id": "008", "question": "大阪", "answer": None},
    ]
    assert all(type(row) is dict for row in rows)


def test_malformed_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2,, "b": 3}\n{"a": 4}\n', "utf-8")
    with pytest.raises(UserError) as info:
        read_records(path)
    message = str(info.value)
    assert f"{path} line 3: not valid JSON (" in message
    assert "fix or remove that line" in message
    assert "\n" not in message


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "data.jsonl", [{"a": 1}, [1, 2]])
    with pytest.raises(UserError, match=r"line 2: expected a JSON object .* found an array"):
        read_records(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_not_utf8(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    body = b'{"q": "ok"}\n{"q": "' if suffix == ".jsonl" else b"q\n"
    path.write_bytes(body + "東京".encode("shift_jis") + (b'"}\n' if suffix == ".jsonl" else b"\n"))
    with pytest.raises(UserError) as info:
        read_records(path)
    message = str(info.value)
    assert message.startswith(f"{path} line 2: not UTF-8")
    assert "re-save the file as UTF-8" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(UserError, match=r"nope\.jsonl: file not found"):
        read_records(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.jsonl", ""), ("blank.jsonl", "\n \n"), ("empty.csv", ""), ("header.csv", "a,b\n")],
)
def test_empty_file(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, "utf-8")
    with pytest.raises(UserError, match=rf"{name}: the file has no records"):
        read_records(path)


def test_empty_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.string())}), path)
    with pytest.raises(UserError, match="has no records"):
        read_records(path)


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_text("not parquet", "utf-8")
    with pytest.raises(UserError, match=r"bad\.parquet: not a readable Parquet file"):
        read_records(path)


@pytest.mark.parametrize("name", ["data.txt", "data.json", "data"])
def test_unknown_suffix_lists_allowed(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text('{"a": 1}\n', "utf-8")
    with pytest.raises(UserError, match=r"unsupported file type .*\.jsonl, \.parquet, \.csv"):
        read_records(path)


# --- load_jsquad ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jsquad_rows() -> list[dict]:
    return load_jsquad(JSQUAD)


def test_load_jsquad_counts_and_first_row(jsquad_rows: list[dict]) -> None:
    document = json.loads(JSQUAD.read_text("utf-8"))
    questions = [q for a in document["data"] for p in a["paragraphs"] for q in p["qas"]]
    impossible = sum(bool(q.get("is_impossible")) for q in questions)
    assert (len(questions), impossible) == (4442, 0)
    assert len(jsquad_rows) == 4442

    first = jsquad_rows[0]
    assert first["id"] == "a10336p0q0"
    assert first["title"] == "梅雨"
    assert first["question"] == "日本で梅雨がないのは北海道とどこか。"
    assert first["context"].startswith("梅雨 [SEP] 梅雨（つゆ、ばいう）は、北海道と小笠原諸島")
    # The file lists 小笠原諸島 twice; duplicates are dropped, order kept.
    assert first["answers"] == ["小笠原諸島", "小笠原諸島を除く日本"]
    assert set(first) == {"id", "title", "context", "question", "answers"}
    assert len({row["id"] for row in jsquad_rows}) == 4442
    assert len({row["title"] for row in jsquad_rows}) == 59


def test_load_jsquad_skips_impossible(tmp_path: Path) -> None:
    qas = [
        {"id": 1, "question": "Q1", "answers": [{"text": "A", "answer_start": 0}]},
        {"id": "q2", "question": "Q2", "answers": [{"text": "B"}], "is_impossible": True},
        {"id": "q3", "question": "Q3", "answers": []},
    ]
    data = {"data": [{"title": "T", "paragraphs": [{"context": "A B", "qas": qas}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data), "utf-8")
    rows = load_jsquad(path)
    assert rows == [{"id": "1", "title": "T", "context": "A B", "question": "Q1", "answers": ["A"]}]


def test_load_jsquad_names_missing_key(tmp_path: Path) -> None:
    qas = [{"id": "q1", "answers": [{"text": "A"}]}]
    data = {"data": [{"title": "T", "paragraphs": [{"context": "A", "qas": qas}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data), "utf-8")
    with pytest.raises(UserError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\] has no 'question'"):
        load_jsquad(path)

    path.write_text(json.dumps([{"question": "Q"}]), "utf-8")
    with pytest.raises(UserError, match=r"not SQuAD/JSQuAD layout: the top level is not an object"):
        load_jsquad(path)

    path.write_text(json.dumps({"version": "1.1"}), "utf-8")
    with pytest.raises(UserError, match=r"the top level has no 'data' key"):
        load_jsquad(path)


def test_load_jsquad_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "squad.json"
    path.write_text('{"data": [\n  {"title": }\n]}', "utf-8")
    with pytest.raises(UserError, match=r"squad\.json line 2: not valid JSON"):
        load_jsquad(path)


# --- split_records --------------------------------------------------------------------------


def _split_ids(splits: dict[str, list[dict]]) -> dict[str, list[str]]:
    return {name: [row["id"] for row in rows] for name, rows in splits.items()}


def test_split_jsquad_by_title(jsquad_rows: list[dict]) -> None:
    splits = split_records(jsquad_rows, seed=0, group_by="title")
    assert list(splits) == ["fewshot", "validation", "test"]
    titles = {name: {row["title"] for row in rows} for name, rows in splits.items()}
    assert not titles["fewshot"] & titles["validation"]
    assert not titles["fewshot"] & titles["test"]
    assert not titles["validation"] & titles["test"]

    total = len(jsquad_rows)
    assert sum(len(rows) for rows in splits.values()) == total
    for name, fraction in zip(splits, (0.2, 0.4, 0.4), strict=True):
        assert abs(len(splits[name]) - fraction * total) <= 0.02 * total
    assert len(splits["fewshot"]) <= 0.2 * total

    order = {row["id"]: i for i, row in enumerate(jsquad_rows)}
    for rows in splits.values():
        positions = [order[row["id"]] for row in rows]
        assert positions == sorted(positions)


def test_split_is_deterministic_per_seed(jsquad_rows: list[dict]) -> None:
    first = _split_ids(split_records(jsquad_rows, seed=0, group_by="title"))
    again = _split_ids(split_records(list(jsquad_rows), seed=0, group_by="title"))
    other = _split_ids(split_records(jsquad_rows, seed=1, group_by="title"))
    assert first == again
    assert first != other


def test_split_ungrouped_exact_fractions() -> None:
    rows = [{"id": str(i)} for i in range(10)]
    splits = split_records(rows, fractions=(0.2, 0.4, 0.4), seed=3)
    assert [len(splits[name]) for name in ("fewshot", "validation", "test")] == [2, 4, 4]
    ids = [row["id"] for name in splits for row in splits[name]]
    assert sorted(ids, key=int) == [str(i) for i in range(10)]
    for part in splits.values():
        assert [int(r["id"]) for r in part] == sorted(int(r["id"]) for r in part)

    no_fewshot = split_records(rows, fractions=(0.0, 0.5, 0.5))
    assert [len(v) for v in no_fewshot.values()] == [0, 5, 5]


def test_split_rejects_bad_fractions_and_missing_group() -> None:
    rows = [{"id": "1", "title": "T"}, {"id": "2"}]
    with pytest.raises(UserError, match="sum to 1"):
        split_records(rows, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(UserError, match=r"record 2 has no 'title' field"):
        split_records(rows, group_by="title")


# --- load_table -----------------------------------------------------------------------------


def test_load_table_with_field_map(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("qid,text,gold,extra\nq1,東京は?,首都,x\nq2,大阪は?,都市,\n", "utf-8")
    rows = load_table(
        path,
        required=["question", "answer"],
        field_map={"id": "qid", "question": "text", "answer": "gold"},
    )
    assert [row for _, row in rows] == [
        {"extra": "x", "id": "q1", "question": "東京は?", "answer": "首都"},
        {"extra": None, "id": "q2", "question": "大阪は?", "answer": "都市"},
    ]


def test_load_table_missing_field_names_row_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("qid,text,gold\nq1,東京は?,首都\nq2,大阪は?,\n", "utf-8")
    with pytest.raises(UserError) as info:
        load_table(
            path,
            required=["question", "answer"],
            field_map={"question": "text", "answer": "gold"},
        )
    message = str(info.value)
    assert f"{path} row 2" in message
    assert "missing required field 'answer' (column 'gold' per field_map)" in message
    assert "columns are: qid, text, gold" in message

    with pytest.raises(UserError, match=r"row 1: missing required field 'question'"):
        load_table(path, required=["question"])


def test_load_table_jsonl_names_line_and_id(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text('{"id": 1, "question": "Q"}\n\n{"id": 2}\n', "utf-8")
    with pytest.raises(UserError, match=r"qa\.jsonl line 3 \(id 2\): missing required field"):
        load_table(path, required=["question"])


def test_load_table_field_map_to_unknown_column(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "qa.jsonl", [{"q": "Q"}])
    with pytest.raises(UserError, match=r"maps 'question' to column 'text'.*columns are: q"):
        load_table(path, required=["question"], field_map={"question": "text"})


def test_load_table_duplicate_id(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "qa.jsonl",
        [{"id": 7, "q": "a"}, {"id": 8, "q": "b"}, {"id": "7", "q": "c"}],
    )
    with pytest.raises(UserError, match=r"qa\.jsonl: duplicate id 7"):
        load_table(path, required=["q"])
    rows = load_table(_write_jsonl(tmp_path / "ok.jsonl", [{"id": 7, "q": "a"}]), required=["q"])
    assert rows == [("line 1", {"id": "7", "q": "a"})]


def test_load_table_says_where_each_row_is(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text('{"id": 1, "q": "a"}\n\n{"id": 2, "q": "b"}\n', "utf-8")
    assert load_table(path, required=["q"]) == [
        ("line 1", {"id": "1", "q": "a"}),
        ("line 3", {"id": "2", "q": "b"}),
    ]


# --- reference fields: QA answers, M-IFEval instructions ------------------------------------


@pytest.mark.parametrize(("value", "answers"), [
    (["東京", "とうきょう"], ["東京", "とうきょう"]),
    ('["東京", "とうきょう"]', ["東京", "とうきょう"]),
    ("東京", ["東京"]),
    ("[東京", ["[東京"]),
    ('"東京"', ['"東京"']),
    ({"text": ["東京"], "answer_start": [3]}, ["東京"]),  # SQuAD rows from the hub
])
def test_decode_answers(value: object, answers: list[str]) -> None:
    assert decode_answers(value, "qa.csv row 1") == answers


@pytest.mark.parametrize("value", [[1, 2], "[1, 2]", [], "[]", ["東京", ""], [" "], None,
                                   {"answer": ["東京"]}, 3])
def test_decode_answers_rejects_non_string_lists(value: object) -> None:
    with pytest.raises(UserError) as info:
        decode_answers(value, "qa.csv row 4 (id x)")
    assert str(info.value).startswith(
        "qa.csv row 4 (id x): 'answers' must be a non-empty list of non-empty strings")


def test_decode_instructions_from_text_cells() -> None:
    row = {"instruction_id_list": '["ja:letters:no_katakana", "ja:keywords:existence"]',
           "kwargs": '[{}, {"keywords": ["猫"]}]'}
    assert decode_instructions(row, "x.csv row 1") == (
        ["ja:letters:no_katakana", "ja:keywords:existence"], [{}, {"keywords": ["猫"]}])


@pytest.mark.parametrize(("ids", "kwargs", "message"), [
    ("[1]", "[{}]", "'instruction_id_list' must be a list of strings, got [1]"),
    ("[]", "[]", "'instruction_id_list' is empty; give at least one instruction id"),
    ('["ja:letters:kansuuji"]', "{}", "'kwargs' must be a list of objects, one per"),
    ('["ja:letters:kansuuji"]', "[{}", "'kwargs' is text that is not valid JSON"),
    ('["ja:letters:kansuuji"]', '[{"n": 1}]',
     "kwargs[0]: ja:letters:kansuuji: unexpected kwarg 'n' (expected: none)"),
    ('["ja:keywords:existence"]', '[{"keywords": "猫"}]',
     "kwargs[0]: ja:keywords:existence: kwarg 'keywords' must be a non-empty list of strings"),
    ('["ja:letters:kansuuji", "ja:nope"]', "[{}, {}]",
     "instruction_id_list[1]: unknown instruction id 'ja:nope'"),
])
def test_decode_instructions_names_row_and_field(ids: str, kwargs: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        decode_instructions({"instruction_id_list": ids, "kwargs": kwargs}, "x.csv row 2 (key 9)")
    assert str(info.value).startswith(f"x.csv row 2 (key 9): {message}")


# --- load_mifeval ---------------------------------------------------------------------------


MIFEVAL_ROWS = [
    {
        "key": 1001,
        "prompt": "300文字以上で書いてください。",
        "instruction_id_list": ["ja:length_constraints:number_letters"],
        "kwargs": [{"relation": "以上", "num_letters": 300}],
    },
    {
        "key": 1002,
        "prompt": "箇条書きで答えてください。",
        "instruction_id_list": ["ja:detectable_format:number_bullet_lists",
                                "ja:letters:no_katakana"],
        "kwargs": [{"num_bullets": 3}, {}],
    },
]


def test_load_mifeval(tmp_path: Path) -> None:
    rows = load_mifeval(_write_jsonl(tmp_path / "mifeval.jsonl", MIFEVAL_ROWS))
    assert [row["id"] for row in rows] == ["1001", "1002"]
    assert rows[1]["kwargs"] == [{"num_bullets": 3}, {}]
    assert rows[0]["key"] == 1001


def test_load_mifeval_length_mismatch(tmp_path: Path) -> None:
    bad = dict(MIFEVAL_ROWS[1], kwargs=[{"num_bullets": 3}])
    path = _write_jsonl(tmp_path / "mifeval.jsonl", [MIFEVAL_ROWS[0], bad])
    with pytest.raises(UserError, match=r"line 2 \(key 1002\): 'instruction_id_list' has 2"):
        load_mifeval(path)


def test_load_mifeval_decodes_text_fields(tmp_path: Path) -> None:
    row = dict(MIFEVAL_ROWS[1], instruction_id_list=json.dumps(
        MIFEVAL_ROWS[1]["instruction_id_list"]), kwargs=json.dumps(MIFEVAL_ROWS[1]["kwargs"]))
    rows = load_mifeval(_write_jsonl(tmp_path / "mifeval.jsonl", [row]))
    assert rows[0]["instruction_id_list"] == MIFEVAL_ROWS[1]["instruction_id_list"]
    assert rows[0]["kwargs"] == [{"num_bullets": 3}, {}]


def test_load_mifeval_missing_field(tmp_path: Path) -> None:
    bad = {k: v for k, v in MIFEVAL_ROWS[0].items() if k != "kwargs"}
    path = _write_jsonl(tmp_path / "mifeval.jsonl", [bad])
    with pytest.raises(UserError, match=r"line 1: missing field 'kwargs'"):
        load_mifeval(path)


# --- load_hf_dataset ------------------------------------------------------------------------


def test_load_hf_dataset_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        load_hf_dataset("shunk031/JGLUE", split="validation")
    message = str(info.value)
    assert "cannot reach the Hugging Face hub" in message
    assert "pass its local file path (JSONL/Parquet/CSV/JSQuAD JSON) instead" in message


def test_load_hf_dataset_without_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UserError, match=r"cannot reach the Hugging Face hub .*local file path"):
        load_hf_dataset("shunk031/JGLUE", split="validation")


def test_hub_rows_get_the_field_map_and_squad_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    from promptsearch.pipelines.data import taskdata
    from promptsearch.pipelines.tasks import load_task

    hub_rows = [{"id": f"q{i}", "context": "東京は日本の首都です。", "query": "日本の首都は？",
                 "answers": {"text": ["東京"], "answer_start": [0]}} for i in range(3)]
    monkeypatch.setattr(taskdata, "load_hf_dataset", lambda dataset_id, split: hub_rows)
    rows = taskdata.load_examples(load_task("qa"), "someone/jsquad-like",
                                  field_map={"question": "query"})
    assert [r["question"] for r in rows] == ["日本の首都は？"] * 3
    assert all(r["answers"] == ["東京"] and "query" not in r for r in rows)
    with pytest.raises(UserError, match="someone/jsquad-like: field_map maps 'question' to "
                                        "column 'q'"):
        taskdata.load_examples(load_task("qa"), "someone/jsquad-like", field_map={"question": "q"})
