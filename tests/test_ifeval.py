"""Instruction-following metric (M-IFEval, Japanese) and the bundled `instruct` data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.ifeval import (
    INSTRUCTION_IDS,
    InstructionVerdict,
    aggregate,
    check_instruction,
    evaluate_response,
    validate_kwargs,
)
from promptsearch.pipelines.ifeval.scoring import loose_variants
from promptsearch.pipelines.ifeval.segmenter import count_sentences

DATA_DIR = Path(__file__).resolve().parents[1] / "pipelines" / "tasks" / "data" / "instruct"

# (instruction id, kwargs, a response that follows it, a response that does not)
CASES = [
    (
        "ja:keywords:existence",
        {"keywords": ["創造性", "猫"]},
        "猫の創造性には驚かされます。",
        "犬の創造性には驚かされます。",
    ),
    (
        "ja:keywords:frequency",
        {"keyword": "大聖堂", "frequency": 3, "relation": "以上"},
        "この大聖堂は有名です。大聖堂の塔は高い。大聖堂には人が多い。",
        "この大聖堂は有名です。大聖堂の塔は高い。",
    ),
    (
        "ja:keywords:frequency",
        {"keyword": "海", "frequency": 2, "relation": "未満"},
        "海が見える町に住んでいます。",
        "海が見える町で、毎朝海を眺めます。",
    ),
    (
        "ja:keywords:forbidden_words",
        {"forbidden_words": ["大聖堂"]},
        "この教会は世界的に有名です。",
        "この大聖堂は世界的に有名です。",
    ),
    (
        "ja:keywords:letter_frequency",
        {"letter": "か", "let_frequency": 3, "let_relation": "以上"},
        "かばんとカメラとかさを買った。",
        "かばんとカメラを買った。",
    ),
    (
        "ja:language:response_language",
        {"language": "ja"},
        "今日はとても良い天気なので、公園を散歩しました。",
        "The weather is lovely today, so I took a walk in the park.",
    ),
    (
        "ja:length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "未満"},
        "今日は晴れです。散歩に行きます！",
        "今日は晴れです。散歩に行きます！公園は広い？",
    ),
    (
        "ja:length_constraints:number_paragraphs",
        {"num_paragraphs": 2},
        "一つ目の段落です。\n***\n二つ目の段落です。",
        "一つ目の段落です。\n***\n\n***\n二つ目の段落です。",
    ),
    (
        "ja:length_constraints:number_letters",
        {"num_letters": 10, "relation": "以上"},
        "あいうえおかきくけこ",
        "あいうえおかきくけ",
    ),
    (
        "ja:length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "創造性"},
        "序文です。\n\n**「創造性** について説明します。",
        "序文です。\n\n想像力について説明します。",
    ),
    (
        "ja:detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "[名前]様、[日付]にお会いしましょう。",
        "[名前]様、明日お会いしましょう。",
    ),
    (
        "ja:detectable_content:postscript",
        {"postscript_marker": "P.P.S."},
        "本文\np.p.s. 追加のメモです。",
        "本文\nP. P. S. 追加のメモです。",  # the reference matches "P.P.S." literally
    ),
    (
        "ja:detectable_content:postscript",
        {"postscript_marker": "P.P.S"},
        "本文\nP. P. S 追加のメモです。",
        "本文\nP.S. 追加のメモです。",
    ),
    (
        "ja:detectable_content:postscript",
        {"postscript_marker": "追伸"},
        "本文です。\n\n追伸　また連絡します。",
        "本文です。\n\n二伸　また連絡します。",
    ),
    (
        "ja:detectable_format:number_bullet_lists",
        {"num_bullets": 3},
        "以下に列挙します:\n\n・一つめ\n* 二つめ\n- 三つめ\n\n**強調** は数えない\n---\n終わり",
        "・一つめ\n・二つめ\n**太字**\n---",
    ),
    (
        "ja:detectable_format:number_numbered_lists",
        {"num_items": 2},
        "1. 玉ねぎを切る\n2. 炒める",
        "1. 玉ねぎを切る\n2. 炒める\n3. 煮込む",
    ),
    (
        "ja:detectable_format:constrained_response",
        {},
        "私の答えは、いいえ、違います。",
        "いいえ、ちがいます。",
    ),
    (
        "ja:detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "《重要》な点と《注意点》があります。",
        "《重要》な点と《 》があります。",
    ),
    (
        "ja:detectable_format:multiple_sections",
        {"section_spliter": "章", "num_sections": 2},
        "第1章\n春の話。\n第２章\n夏の話。",
        "第1章\n春の話。\n第2節\n夏の話。",
    ),
    (
        "ja:detectable_format:json_format",
        {},
        '```json\n{"name": "東京", "rank": 1}\n```',
        '```json\n{"name": "東京", "rank": 1,}\n```',
    ),
    (
        "ja:detectable_format:title",
        {},
        "『秋の夕暮れ』\n稲穂が揺れる。",
        "『 』\n稲穂が揺れる。",
    ),
    (
        "ja:detectable_format:nominal_ending",
        {"count": 2},
        "駅前の新しいカフェ。人気は季節のタルト。",
        "駅前に新しいカフェができた。「人気のタルト。」がおすすめです。",
    ),
    (  # IPADIC, the reference's dictionary: お疲れ様 is an interjection, ＡＩ a symbol
        "ja:detectable_format:nominal_ending",
        {"count": 1},
        "今日の主役は新しい機械。",
        "みなさん、お疲れ様。これがＡＩ。",
    ),
    (
        "ja:combination:two_responses",
        {},
        "続けることが大切です。\n******\nあきらめないことが大切です。",
        "続けることが大切です。\n******\n続けることが大切です。",
    ),
    (
        "ja:combination:repeat_prompt",
        {"prompt_to_repeat": "おすすめの本を教えてください。"},
        "おすすめの本を教えてください。『坊っちゃん』がおすすめです。",
        "本のおすすめですね。『坊っちゃん』がおすすめです。",
    ),
    (
        "ja:startend:end_checker",
        {"end_phrase": "「そばの香りが漂う中、物語は終わりを迎えた。」"},
        "本文...\n\n**「そばの香りが漂う中、物語は終わりを迎えた。」**",
        "本文...\n\n「そばの香りが漂う中、物語は終わりを迎えた。」おしまい。",
    ),
    (
        "ja:startend:sentence_unified_end",
        {"ending": "です"},
        "今日は晴れです。彼は「行くよ。」と言ったそうです。",
        "今日は晴れです。明日は雨だろう。",
    ),
    (
        "ja:startend:quotation",
        {},
        "「虹は光が水滴で曲がってできます。」",
        "「虹は光が水滴で曲がってできます。」と先生は言った。",
    ),
    (
        "ja:letters:furigana",
        {},
        "東京（とうきょう）に行（い）きます。",
        "東京（とうきょう）に行きます。",
    ),
    (
        "ja:letters:kansuuji",
        {},
        "りんごを三個と卵を二個使います。",
        "りんごを３個使います。",
    ),
    (
        "ja:letters:no_katakana",
        {},
        "ぱそこんは便利です。",
        "パソコンは便利です。",
    ),
    (
        "ja:letters:katakana_only",
        {},
        "コーヒー、ソーダ・ジュース！",
        "コーヒーとジュース",
    ),
    (
        "ja:letters:no_hiragana",
        {},
        "週末、友人ト映画館ヘ行ク予定。",
        "週末は映画館へ行く予定。",
    ),
    (
        "ja:letters:hiragana_only",
        {},
        "せんせい、ありがとう！",
        "先生、ありがとう！",
    ),
    (
        "ja:letters:kanji",
        {"kanji_limit": 3, "relation": "未満"},
        "まいにち散歩します。",
        "毎日散歩します。",
    ),
    (
        "ja:punctuation:no_comma",
        {},
        "朝は早く起きます。",
        "朝は、早く起きます。",
    ),
    (
        "ja:punctuation:no_period",
        {},
        "電車が便利です",
        "電車が便利です。",
    ),
]


def test_instruction_ids_are_the_33_japanese_ids() -> None:
    assert len(INSTRUCTION_IDS) == 33
    assert len(set(INSTRUCTION_IDS)) == 33
    assert all(i.startswith("ja:") for i in INSTRUCTION_IDS)
    assert "ja:length_constraints:number_letters" in INSTRUCTION_IDS
    assert "ja:detectable_format:nominal_ending" in INSTRUCTION_IDS


def test_every_id_has_a_passing_and_a_failing_case() -> None:
    assert {case[0] for case in CASES} == set(INSTRUCTION_IDS)


@pytest.mark.parametrize(("instruction_id", "kwargs", "good", "bad"), CASES)
def test_check_instruction(instruction_id: str, kwargs: dict, good: str, bad: str) -> None:
    assert check_instruction(instruction_id, good, kwargs) is True
    assert check_instruction(instruction_id, bad, kwargs) is False


@pytest.mark.parametrize("instruction_id", INSTRUCTION_IDS)
def test_blank_response_never_passes(instruction_id: str) -> None:
    kwargs = next(case[1] for case in CASES if case[0] == instruction_id)
    assert check_instruction(instruction_id, " \n", kwargs) is False


def test_sentence_count_follows_ja_sentence_segmenter() -> None:
    assert count_sentences("今日は晴れ。明日は雨！あさっては？") == 3
    # Punctuation inside 「」 or () does not end a sentence; full-width ！ does.
    assert count_sentences("彼は「行く。来る。」と言った。(注。)よし！") == 2
    # Each line is cut on its own; a line ending in の joins the next one.
    assert count_sentences("見出し\n本文です。\n\n私の\n本です。") == 3
    assert count_sentences("") == 0


def test_sentence_unified_end_trailing_newline_is_a_sentence() -> None:
    kwargs = {"ending": "です"}
    assert check_instruction("ja:startend:sentence_unified_end", "晴れです。", kwargs)
    assert not check_instruction("ja:startend:sentence_unified_end", "晴れです。\n", kwargs)


def test_strict_and_loose_differ_on_a_preamble_line() -> None:
    ids = ["ja:combination:repeat_prompt", "ja:startend:quotation"]
    kwargs = [{"prompt_to_repeat": "おすすめの本を教えてください。"}, {}]
    response = "以下が回答です。\nおすすめの本を教えてください。「坊っちゃん」"
    verdicts = evaluate_response(response, ids, kwargs)
    assert verdicts == [
        InstructionVerdict("ja:combination:repeat_prompt", strict=False, loose=True),
        InstructionVerdict("ja:startend:quotation", strict=False, loose=False),
    ]


def test_strict_and_loose_differ_on_star_markup() -> None:
    verdicts = evaluate_response(
        "**おすすめの本を教えてください。**\n『坊っちゃん』です。",
        ["ja:combination:repeat_prompt", "ja:detectable_format:title"],
        [{"prompt_to_repeat": "おすすめの本を教えてください。"}, {}],
    )
    assert [(v.strict, v.loose) for v in verdicts] == [(False, True), (True, True)]


def test_loose_drops_a_closing_line() -> None:
    kwargs = [{"end_phrase": "よろしくお願いします。"}]
    response = "明日の会議資料を送ります。よろしくお願いします。\n何かあれば連絡してください。"
    (verdict,) = evaluate_response(response, ["ja:startend:end_checker"], kwargs)
    assert (verdict.strict, verdict.loose) == (False, True)


def test_loose_variants_mirror_the_reference_order() -> None:
    assert loose_variants("a*\nb\n*c") == [
        "a*\nb\n*c",
        "a\nb\nc",
        "b\n*c",
        "a*\nb",
        "b",
        "b\nc",
        "a\nb",
        "b",
    ]


def test_empty_response_fails_strict_and_loose() -> None:
    (verdict,) = evaluate_response("", ["ja:letters:kansuuji"], [{}])
    assert verdict == InstructionVerdict("ja:letters:kansuuji", strict=False, loose=False)


def test_aggregate_by_hand() -> None:
    rows = [
        [
            InstructionVerdict("ja:punctuation:no_comma", strict=True, loose=True),
            InstructionVerdict("ja:letters:kansuuji", strict=False, loose=True),
        ],
        [InstructionVerdict("ja:startend:quotation", strict=True, loose=True)],
    ]
    # strict: prompts 1 of 2 all-pass, instructions 2 of 3; loose: 2 of 2 and 3 of 3.
    assert aggregate(rows) == pytest.approx(
        {
            "prompt_level_strict_acc": 50.0,
            "inst_level_strict_acc": 200 / 3,
            "prompt_level_loose_acc": 100.0,
            "inst_level_loose_acc": 100.0,
        }
    )


def test_aggregate_of_nothing_is_zero() -> None:
    assert aggregate([]) == {
        "prompt_level_strict_acc": 0.0,
        "inst_level_strict_acc": 0.0,
        "prompt_level_loose_acc": 0.0,
        "inst_level_loose_acc": 0.0,
    }


def test_validate_kwargs_normalises_like_the_reference() -> None:
    assert validate_kwargs(
        "ja:length_constraints:number_letters",
        {"num_letters": 200, "relation": "未満", "keywords": None},
    ) == {"num_letters": 200, "relation": "未満"}
    assert validate_kwargs("ja:startend:end_checker", {"end_phrase": " 以上です。 "}) == {
        "end_phrase": "以上です。"
    }
    assert validate_kwargs(
        "ja:keywords:forbidden_words", {"forbidden_words": ["猫", "犬", "猫"]}
    ) == {"forbidden_words": ["犬", "猫"]}
    assert validate_kwargs("ja:punctuation:no_comma", None) == {}


def test_validate_kwargs_unknown_id() -> None:
    with pytest.raises(
        UserError, match=r"unknown instruction id 'ja:keywords:exist'.*INSTRUCTION_IDS"
    ):
        validate_kwargs("ja:keywords:exist", {})


def test_validate_kwargs_missing_kwarg() -> None:
    with pytest.raises(
        UserError, match=r"^ja:length_constraints:number_letters: missing kwarg 'relation'$"
    ):
        validate_kwargs("ja:length_constraints:number_letters", {"num_letters": 300})


def test_validate_kwargs_wrong_type() -> None:
    with pytest.raises(UserError) as excinfo:
        validate_kwargs(
            "ja:length_constraints:number_letters", {"num_letters": "六百", "relation": "未満"}
        )
    assert str(excinfo.value) == (
        "ja:length_constraints:number_letters: kwarg 'num_letters' must be a non-negative "
        "integer, got '六百'"
    )


@pytest.mark.parametrize(
    ("instruction_id", "kwargs", "message"),
    [
        ("ja:letters:kanji", {"kanji_limit": 5, "relation": "以下"}, "kwarg 'relation'"),
        ("ja:letters:kanji", {"kanji_limit": True, "relation": "以上"}, "kwarg 'kanji_limit'"),
        ("ja:keywords:existence", {"keywords": "猫"}, "kwarg 'keywords'"),
        (
            "ja:keywords:letter_frequency",
            {"letter": "カ", "let_frequency": 1, "let_relation": "以上"},
            "kwarg 'letter'",
        ),
        ("ja:language:response_language", {"language": "xx"}, "kwarg 'language'"),
        (
            "ja:length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "私"},
            "kwarg 'nth_paragraph'",
        ),
        ("ja:combination:repeat_prompt", {"prompt_to_repeat": ""}, "kwarg 'prompt_to_repeat'"),
        ("ja:punctuation:no_comma", {"count": 1}, "unexpected kwarg 'count'"),
    ],
)
def test_validate_kwargs_rejects(instruction_id: str, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        validate_kwargs(instruction_id, kwargs)


def test_evaluate_response_misaligned_lists() -> None:
    with pytest.raises(UserError, match="aligned"):
        evaluate_response("はい。", ["ja:punctuation:no_comma"], [{}, {}])


def _rows(name: str) -> list[dict]:
    with open(DATA_DIR / f"{name}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_instruct_data_counts_keys_and_coverage() -> None:
    splits = {name: _rows(name) for name in ("fewshot", "validation", "test")}
    assert {name: len(rows) for name, rows in splits.items()} == {
        "fewshot": 8,
        "validation": 20,
        "test": 20,
    }
    keys = [row["key"] for rows in splits.values() for row in rows]
    assert all(isinstance(key, int) for key in keys)
    assert len(set(keys)) == 48

    def types(rows: list[dict]) -> set[str]:
        return {i for row in rows for i in row["instruction_id_list"]}

    assert len(types([row for rows in splits.values() for row in rows])) >= 20
    assert len(types(splits["validation"])) >= 12
    assert len(types(splits["test"])) >= 12
    for rows in splits.values():
        for row in rows:
            assert isinstance(row["prompt"], str) and row["prompt"].strip()
            assert 1 <= len(row["instruction_id_list"]) <= 3
            assert len(row["kwargs"]) == len(row["instruction_id_list"])
            for instruction_id, kwargs in zip(
                row["instruction_id_list"], row["kwargs"], strict=True
            ):
                validate_kwargs(instruction_id, kwargs)


def test_fewshot_responses_pass_strictly() -> None:
    for row in _rows("fewshot"):
        verdicts = evaluate_response(row["response"], row["instruction_id_list"], row["kwargs"])
        assert [v.strict for v in verdicts] == [True] * len(verdicts), row["key"]
