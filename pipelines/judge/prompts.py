"""The judge's Japanese rubric: grading one answer 1-5, and choosing between two answers.

The scale and the deductions follow ELYZA-tasks-100's way of grading (a 1-5 score against a
model answer and per-question grading notes), written here in our own words. Any change to
the wording changes the grades: raise ``JUDGE_PROMPT_VERSION`` with it, so that reports say
which rubric graded them (the cache keys on the prompt text itself, so old grades are never
reused for a new rubric).
"""

from __future__ import annotations

from dataclasses import dataclass

JUDGE_PROMPT_VERSION = 1

GRADE_PREFIX = "評価:"
WINNER_PREFIX = "勝者:"

SYSTEM = "あなたは日本語の回答を公平かつ厳密に採点する審査員です。"

RUBRIC = """\
採点の目安 (1から5の整数):
5: 質問の意図をすべて満たし、内容が正確で、自然な日本語で書かれている。
4: おおむね満たしているが、小さな不足や少し不自然な表現がある。
3: 要点の一部には答えているが、はっきりした誤りや不足がある。
2: 形式上は答えているが、内容の大半が誤っているか的外れである。
1: 質問に答えていない、明らかに誤っている、または日本語の文章になっていない。

減点の目安:
- 事実の誤りや、採点基準が求める要素の欠落は、重さに応じて1〜2点下げる。
- 指示された形式や条件 (字数、個数、箇条書きなど) を守っていなければ1点下げる。
- 日本語以外で答えている場合は、内容にかかわらず2点以下とする。
- 不自然な日本語、同じ内容の繰り返し、質問と関係のない前置きや続きは1点下げる。
- 模範解答と言い回しが違うだけで内容が正しければ減点しない。
- 長さそのものを理由に加点しない。"""

QUESTION = """\
【質問】
{input}

【模範解答】
{reference}

【採点基準】
{eval_aspect}"""
"""The question, its model answer and its grading notes, as both prompts show them."""

GRADE_TASK = """\
次の【質問】に対する【回答】を、【模範解答】と【採点基準】を参考に採点してください。

{rubric}

""" + QUESTION + """

【回答】
{output}"""

GRADE_FORMAT = "1行目に「評価: 数字」の形で点数だけを書き、2行目に理由を一文で書いてください。"

TEXT_EXAMPLES = """\
(採点の例)
【質問】
日本の首都はどこですか。
【模範解答】
東京です。
【回答】
東京です。
評価: 5

【質問】
1たす1はいくつですか。
【模範解答】
2です。
【回答】
3です。
評価: 1

(ここから本番)"""
"""For a model without a chat template (a base model): two graded answers, one good, one
wrong, so that it continues ``評価:`` with a grade rather than with the rubric's text."""

TEXT_RETRY = "(形式が正しくありません。もう一度答えます。)"
"""For a model without a chat template: the retry continues the text after its reply."""

GRADE_RETRY = ("形式が守られていません。「評価: 数字」(数字は1から5の整数) の形で、"
               "点数だけをもう一度書いてください。")

PAIR_TASK = """\
次の【質問】に対する二つの回答【回答A】と【回答B】のうち、よりよい方を選んでください。
【模範解答】と【採点基準】を参考に、下の採点の目安で比べます。回答の順番や長さで判断しないでください。

{rubric}

""" + QUESTION + """

【回答A】
{first}

【回答B】
{second}"""

PAIR_FORMAT = ("1行目に「勝者: A」「勝者: B」「勝者: 引き分け」のいずれかだけを書き、"
               "2行目に理由を一文で書いてください。")

PAIR_RETRY = ("形式が守られていません。「勝者: A」「勝者: B」「勝者: 引き分け」のいずれか"
              "だけをもう一度書いてください。")


@dataclass(frozen=True)
class JudgePrompt:
    """One question to the judge, as chat messages; ``prefix`` starts the expected answer
    line. A model without a chat template gets ``text`` instead, which ends in ``prefix``
    (without the format instruction, which a base model copies rather than follows), and
    its completion is read with ``prefix`` in front."""

    messages: tuple[tuple[str, str], ...]
    """(role, content) pairs."""
    text: str
    prefix: str
    retry: str
    """The follow-up that asks once more when the first reply has no parsable answer."""

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def as_text(self) -> str:
        return self.text

    def retried(self, reply: str) -> JudgePrompt:
        """The same conversation with the judge's unparsable ``reply`` and the reminder."""
        first_line = reply.removeprefix(self.prefix).strip().split("\n", 1)[0]
        return JudgePrompt(messages=(*self.messages, ("assistant", reply), ("user", self.retry)),
                           text=f"{self.text} {first_line}\n{TEXT_RETRY}\n{self.prefix}",
                           prefix=self.prefix, retry=self.retry)


def _prompt(task: str, answer_format: str, prefix: str, retry: str,
            examples: str = "") -> JudgePrompt:
    shown = f"{examples}\n\n" if examples else ""
    return JudgePrompt(messages=(("system", SYSTEM), ("user", f"{task}\n\n{answer_format}")),
                       text=f"{SYSTEM}\n\n{shown}{task}\n\n{prefix}", prefix=prefix,
                       retry=retry)


def grade_prompt(*, question: str, reference: str, eval_aspect: str, answer: str) -> JudgePrompt:
    text = GRADE_TASK.format(rubric=RUBRIC, input=question, reference=reference,
                             eval_aspect=eval_aspect or "(特になし)", output=answer or "(空の回答)")
    return _prompt(text, GRADE_FORMAT, GRADE_PREFIX, GRADE_RETRY, TEXT_EXAMPLES)


def pair_prompt(*, question: str, reference: str, eval_aspect: str, first: str,
                second: str) -> JudgePrompt:
    text = PAIR_TASK.format(rubric=RUBRIC, input=question, reference=reference,
                            eval_aspect=eval_aspect or "(特になし)", first=first or "(空の回答)",
                            second=second or "(空の回答)")
    return _prompt(text, PAIR_FORMAT, WINNER_PREFIX, PAIR_RETRY)
