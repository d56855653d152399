"""JSQuAD EM/F1 (JGLUE's definition) and Japanese ROUGE, against hand-computed values."""

from __future__ import annotations

import os

import pytest

from promptsearch.pipelines.metrics.qa import char_f1, exact_match, normalize_answer
from promptsearch.pipelines.metrics.rouge import rouge_scores, tokenize_japanese


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("東京", "東京"),
        ("東京。", "東京"),
        ("東京。。", "東京"),
        ("東京。大阪", "東京。大阪"),
        ("  Tokyo   Tower。", "tokyo tower"),
        ("東京　タワー", "東京 タワー"),
        ("東京。 ", "東京。"),
        ("ＡＢＣ", "ａｂｃ"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_basic_and_several_golds() -> None:
    assert exact_match("東京", ["東京"]) == 100.0
    assert exact_match("大阪", ["東京"]) == 0.0
    assert exact_match("小笠原諸島", ["小笠原諸島を除く日本", "小笠原諸島"]) == 100.0
    assert exact_match("小笠原", ["小笠原諸島を除く日本", "小笠原諸島"]) == 0.0


def test_exact_match_trailing_maru_case_and_whitespace() -> None:
    assert exact_match("東京。", ["東京"]) == 100.0
    assert exact_match("東京", ["東京。"]) == 100.0
    # JGLUE strips 。 before collapsing whitespace, so a 。 followed by a space survives.
    assert exact_match("東京。 ", ["東京"]) == 0.0
    assert exact_match("ABC", ["abc"]) == 100.0
    assert exact_match("  東京   タワー \n", ["東京 タワー"]) == 100.0
    assert exact_match("東京　タワー", ["東京 タワー"]) == 100.0
    assert exact_match("東京タワー", ["東京 タワー"]) == 0.0


def test_full_width_is_not_folded_to_half_width() -> None:
    # JGLUE lower-cases but does not NFKC-normalise.
    assert exact_match("ＡＢＣ", ["abc"]) == 0.0
    assert char_f1("ＡＢＣ", ["abc"]) == 0.0
    assert exact_match("ＡＢＣ", ["ａｂｃ"]) == 100.0
    assert exact_match("１２３", ["123"]) == 0.0


def test_empty_prediction_scores_zero() -> None:
    assert exact_match("", ["東京"]) == 0.0
    assert char_f1("", ["東京"]) == 0.0
    assert char_f1("   ", ["東京"]) == 0.0
    assert char_f1("。", ["東京"]) == 0.0
    # Gold answers that normalise to "" are ignored, as in get_raw_scores.
    assert char_f1("", ["", "東京"]) == 0.0


def test_no_gold_answer_means_unanswerable() -> None:
    assert exact_match("", []) == 100.0
    assert char_f1("", []) == 100.0
    assert exact_match("東京", []) == 0.0
    assert char_f1("東京", [""]) == 0.0


def test_char_f1_hand_computed() -> None:
    assert char_f1("東京", ["東京"]) == 100.0
    # pred 東京都庁 (4 chars), gold 東京都 (3): common 3, P=3/4, R=1 -> F1=6/7.
    assert char_f1("東京都庁", ["東京都"]) == pytest.approx(600 / 7)
    # Counts are clipped: ああい vs あいい share one あ and one い, P=R=2/3.
    assert char_f1("ああい", ["あいい"]) == pytest.approx(200 / 3)
    # The space left after collapsing counts: 5 of gold's 6 chars -> F1=10/11.
    assert char_f1("東京タワー", ["東京 タワー"]) == pytest.approx(1000 / 11)
    # 。 before a trailing space is kept: 3 pred chars, 2 gold -> F1=4/5.
    assert char_f1("東京。 ", ["東京"]) == pytest.approx(80.0)
    assert char_f1("大阪", ["東京"]) == 0.0


def test_char_f1_takes_best_gold() -> None:
    # 小笠原諸島を除く (8 chars) inside 小笠原諸島を除く日本 (10): P=1, R=0.8 -> F1=8/9.
    golds = ["北海道", "小笠原諸島を除く日本"]
    assert char_f1("小笠原諸島を除く", golds) == pytest.approx(800 / 9)
    assert char_f1("小笠原諸島を除く", list(reversed(golds))) == pytest.approx(800 / 9)
    assert char_f1("北海道", golds) == 100.0


def test_golds_must_be_a_sequence_of_strings() -> None:
    with pytest.raises(TypeError):
        exact_match("東京", "東京")


class _FugashiTokenizer:
    """Independent reference tokenizer: fugashi + unidic-lite, non-whitespace surfaces."""

    def __init__(self) -> None:
        import fugashi
        import unidic_lite

        rc = os.path.join(unidic_lite.DICDIR, "mecabrc")
        self._tagger = fugashi.Tagger(f'-d "{unidic_lite.DICDIR}" -r "{rc}"')

    def tokenize(self, text: str) -> list[str]:
        return [w.surface for w in self._tagger(text) if w.surface.strip()]


PAIRS = [
    ("東京は日本の首都です。", "日本の首都は東京です。"),
    ("今日は雨が降ったので、試合は中止になった。", "雨のため今日の試合は中止された。"),
    ("猫が好きです。", "犬が好きです。"),
]


def test_tokenize_japanese() -> None:
    assert tokenize_japanese("東京は日本の首都です。") == [
        "東京",
        "は",
        "日本",
        "の",
        "首都",
        "です",
        "。",
    ]
    assert tokenize_japanese("東京　タワー で\n待つ") == ["東京", "タワー", "で", "待つ"]


@pytest.mark.parametrize(("reference", "prediction"), PAIRS)
def test_rouge_matches_direct_rouge_score(reference: str, prediction: str) -> None:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(
        ["rouge1", "rouge2", "rougeL"], use_stemmer=False, tokenizer=_FugashiTokenizer()
    )
    expected = {k: 100 * v.fmeasure for k, v in scorer.score(reference, prediction).items()}
    got = rouge_scores(reference, prediction)
    assert got.keys() == {"rouge1", "rouge2", "rougeL"}
    for name in ("rouge1", "rouge2", "rougeL"):
        assert got[name] == pytest.approx(expected[name])
    assert got["rouge1"] > 0


def test_rouge_hand_computed() -> None:
    # Same 7 morphemes reordered: 3 of 6 bigrams shared; LCS 日本/の/首都/です/。 = 5 of 7.
    got = rouge_scores("東京は日本の首都です。", "日本の首都は東京です。")
    assert got["rouge1"] == pytest.approx(100.0)
    assert got["rouge2"] == pytest.approx(50.0)
    assert got["rougeL"] == pytest.approx(500 / 7)


def test_rouge_identical_and_disjoint() -> None:
    text = "今日は雨が降ったので、試合は中止になった。"
    assert rouge_scores(text, text) == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
    assert rouge_scores("東京", "大阪") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_default_rouge_tokenizer_scores_japanese_zero() -> None:
    """Why the custom tokenizer exists: the default one drops all non-ASCII text."""
    from rouge_score import rouge_scorer

    reference, prediction = PAIRS[0]
    default = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    scores = default.score(reference, prediction)
    assert all(score.fmeasure == 0.0 for score in scores.values())
    assert rouge_scores(reference, prediction)["rouge1"] == 100.0
