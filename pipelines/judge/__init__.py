"""A model as the metric: a Japanese rubric, a strict grade parse, two ways to reach the judge.

``EngineJudge`` runs on promptsearch's own engines (the run's pool when the judge is the run's
model, else a pool of its own in the same Ray cluster); ``HttpJudge`` calls any
OpenAI-compatible server. Both go through the generation cache.
"""

from promptsearch.pipelines.judge.base import (
    Grade,
    GradeItem,
    Judge,
    JudgeCost,
    JudgeError,
    JudgeReply,
    grade_answers,
)
from promptsearch.pipelines.judge.engine import EngineJudge
from promptsearch.pipelines.judge.http import API_KEY_ENV, HttpJudge
from promptsearch.pipelines.judge.pairwise import PairItem, PairVerdict, judge_pairs, summarize
from promptsearch.pipelines.judge.parse import parse_grade, parse_winner
from promptsearch.pipelines.judge.prompts import JUDGE_PROMPT_VERSION, JudgePrompt

__all__ = ["API_KEY_ENV", "JUDGE_PROMPT_VERSION", "EngineJudge", "Grade", "GradeItem",
           "HttpJudge", "Judge", "JudgeCost", "JudgeError", "JudgePrompt", "JudgeReply",
           "PairItem", "PairVerdict", "grade_answers", "judge_pairs", "parse_grade",
           "parse_winner", "summarize"]
