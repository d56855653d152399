"""The judge: strict grade parsing, the OpenAI-compatible client over real HTTP, the `open`
task, `run --judge` end to end on the real engine, and `compare --judge` in both orders.

Most tests need no engine: the HTTP client is tested against a small real HTTP server started
here (``_ScriptedServer``), whose replies are scripted per model name, so that every path
(grades, retries, a 500, a timeout, a judge that never grades) is exercised exactly. One engine
test runs vLLM's own OpenAI server with SmolLM2-135M-Instruct, a real chat model; one runs a
search on `open` with gemma-3-270m judging on the session's engines.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from promptsearch.pipelines.judge import (
    GradeItem,
    HttpJudge,
    JudgeError,
    grade_answers,
    parse_grade,
    parse_winner,
)
from promptsearch.pipelines.judge.pairwise import combine
from promptsearch.pipelines.judge.prompts import JudgePrompt, grade_prompt
from tests.conftest import REPO, run_cli
from tests.sshd import free_ports

OPEN_DATA = REPO / "pipelines/tasks/data/open"


# -- parsing ------------------------------------------------------------------------------

@pytest.mark.parametrize(("reply", "grade"), [
    ("評価: 4\n要点を満たしている。", 4), ("評価：５点", 5), ("**評価: 3**", 3), ("評価: 2/5", 2),
    ("\n 評価: 1。理由", 1),
    ("4", None), ("評価: 3〜4", None), ("評価: 6", None), ("評価: 12", None), ("", None),
    ("理由を先に書きます。\n評価: 4", None), ("評価: よい", None), ("評価: 0", None),
])
def test_grade_parse_is_strict(reply: str, grade: int | None) -> None:
    assert parse_grade(reply) == grade


@pytest.mark.parametrize(("reply", "winner"), [
    ("勝者: A", "A"), ("勝者：Ｂ\n理由", "B"), ("勝者: 引き分け", "tie"), ("勝者: AとB", None),
    ("Aです", None),
])
def test_winner_parse_is_strict(reply: str, winner: str | None) -> None:
    assert parse_winner(reply) == winner


def test_a_side_wins_only_when_both_orders_agree() -> None:
    assert combine("A", "A") == "win"
    assert combine("B", "B") == "loss"
    assert combine("A", "B") == "tie"  # position bias: each order picked the first shown
    assert combine("tie", "tie") == "tie"
    assert combine("A", None) is None


def test_text_prompt_ends_with_the_answer_prefix_and_retry_keeps_the_reply() -> None:
    prompt = grade_prompt(question="質問", reference="模範", eval_aspect="", answer="回答")
    assert prompt.as_text().endswith("評価:")
    again = prompt.retried("わかりません")
    assert [role for role, _ in again.messages] == ["system", "user", "assistant", "user"]
    assert again.messages[2][1] == "わかりません"


# -- a real HTTP server with scripted replies ------------------------------------------------

class _ScriptedServer:
    """``POST /v1/chat/completions`` over real HTTP; the reply depends on the model name:

    ``grader``: ``評価: 4``; ``mute``: never a grade; ``flaky``: 500 on each prompt's first
    request, then a grade; ``slow``: answers after 2 s; ``longer``: in a pairwise prompt,
    picks the longer answer; ``first``: always picks the answer shown first (position bias).
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.seen: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                status, reply = server.reply(body)
                if status == 0:
                    time.sleep(2)
                    status = 200
                data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant",
                                                            "content": reply}}],
                                   "usage": {"prompt_tokens": 100, "completion_tokens": 5,
                                             "total_tokens": 105}}
                                  if status == 200 else {"error": {"message": reply}})
                payload = data.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A client that gave up (the timeout test) makes the late reply fail; that is expected
        # and must not print on whatever stderr a later command has captured.
        self.httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reply(self, body: dict) -> tuple[int, str]:
        model = body["model"]
        text = body["messages"][1]["content"]
        if model == "grader":
            return 200, "評価: 4\n模範解答とほぼ同じ内容です。"
        if model == "mute":
            return 200, "この回答はよいと思います。"
        if model == "flaky":
            key = json.dumps(body["messages"], ensure_ascii=False)
            if key not in self.seen:
                self.seen.add(key)
                return 500, "overloaded"
            return 200, "評価: 3"
        if model == "slow":
            return 0, "評価: 5"
        if model in ("longer", "first"):
            first = re.search(r"【回答A】\n(.*?)\n\n【回答B】", text, re.S).group(1)
            second = re.search(r"【回答B】\n(.*?)\n\n1行目", text, re.S).group(1)
            if model == "first" or len(first) >= len(second):
                return 200, "勝者: A"
            return 200, "勝者: B"
        return 404, f"The model `{model}` does not exist."

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[_ScriptedServer]:
    scripted = _ScriptedServer()
    yield scripted
    scripted.close()


def _items(n: int = 3) -> list[GradeItem]:
    rows = [json.loads(line) for line in (OPEN_DATA / "validation.jsonl").open()][:n]
    return [GradeItem(r["input"], r["reference"], r["eval_aspect"], r["reference"]) for r in rows]


def test_http_grades_are_parsed_and_a_rerun_makes_no_request(server: _ScriptedServer,
                                                             tmp_path: Path) -> None:
    before = len(server.requests)
    judge = HttpJudge(server.url, "grader", cache=tmp_path / "cache")
    grades, cost = asyncio.run(grade_answers(judge, _items(3)))
    assert [g.value for g in grades] == [4, 4, 4]
    assert (cost.calls, cost.cached, cost.prompt_tokens) == (3, 0, 300)
    sent = server.requests[before:]
    assert len(sent) == 3 and all(b["temperature"] == 0.0 for b in sent)
    assert sent[0]["messages"][0]["role"] == "system" and "評価" in sent[0]["messages"][1]["content"]
    again = HttpJudge(server.url, "grader", cache=tmp_path / "cache")  # a re-run: new process
    grades2, cost2 = asyncio.run(grade_answers(again, _items(3)))
    assert [g.value for g in grades2] == [4, 4, 4]
    assert (cost2.calls, cost2.cached) == (0, 3)
    assert len(server.requests) == before + 3


def test_an_unparsable_grade_is_recorded_and_asked_once_more(server: _ScriptedServer,
                                                            tmp_path: Path) -> None:
    before = len(server.requests)
    judge = HttpJudge(server.url, "mute", cache=tmp_path / "cache")
    grades, cost = asyncio.run(grade_answers(judge, _items(2)))
    assert [g.value for g in grades] == [None, None]
    assert all(g.retried and "--- retry ---" in g.reply for g in grades)
    retries = server.requests[before + 2:]
    assert len(retries) == 2 and retries[0]["messages"][2]["role"] == "assistant"
    assert cost.calls == 4


def test_a_server_error_is_retried_with_backoff(server: _ScriptedServer, tmp_path: Path) -> None:
    judge = HttpJudge(server.url, "flaky", backoff_s=0.05, cache=None)
    grades, _ = asyncio.run(grade_answers(judge, _items(2)))
    assert [g.value for g in grades] == [3, 3]
    assert judge.requests_sent == 4


def test_a_refused_connection_is_one_clear_error() -> None:
    judge = HttpJudge(f"http://127.0.0.1:{free_ports(1)[0]}/v1", "grader", attempts=2,
                      backoff_s=0.01)
    with pytest.raises(JudgeError) as info:
        asyncio.run(grade_answers(judge, _items(1)))
    message = str(info.value)
    assert "connection refused after 2 attempts" in message and "\n" not in message


def test_a_judge_that_never_answers_times_out(server: _ScriptedServer) -> None:
    judge = HttpJudge(server.url, "slow", timeout_s=0.3, attempts=2, backoff_s=0.01)
    with pytest.raises(JudgeError, match=r"no answer within 0.3 s after 2 attempts"):
        asyncio.run(grade_answers(judge, _items(1)))


def test_an_unknown_model_stops_at_once(server: _ScriptedServer) -> None:
    judge = HttpJudge(server.url, "nosuch", attempts=3)
    with pytest.raises(JudgeError, match=r"HTTP 404: The model `nosuch` does not exist.*"
                                         r"--judge-model 'nosuch'"):
        asyncio.run(grade_answers(judge, _items(1)))
    assert judge.requests_sent == 1


# -- the CLI: one line per bad input, before any engine -------------------------------------

def _one_error_line(result: object) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_run_open_needs_a_judge_and_other_tasks_refuse_one(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    line = _one_error_line(run_cli("run", "--task", "open", "--out", out))
    assert "--judge NAME|DIR" in line
    line = _one_error_line(run_cli("run", "--task", "qa", "--judge", "gemma-3-270m",
                                   "--out", out))
    assert "scored without a judge" in line
    line = _one_error_line(run_cli("run", "--task", "open", "--judge-url",
                                   "http://localhost:1/v1", "--out", out))
    assert "--judge-model" in line
    assert not (tmp_path / "run").exists()
    line = _one_error_line(run_cli("eval", "--task", "open", "--out", str(tmp_path / "eval")))
    assert "--judge NAME|DIR" in line
    assert not (tmp_path / "eval").exists()


def test_run_with_a_refused_judge_url_stops_before_any_engine(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_ports(1)[0]}/v1"
    line = _one_error_line(run_cli("run", "--task", "open", "--judge-url", url,
                                   "--judge-model", "x", "--out", str(tmp_path / "run")))
    assert "connection refused" in line and url in line
    assert not (tmp_path / "run").exists()


def test_run_with_a_judge_that_never_grades_stops_before_any_engine(
        server: _ScriptedServer, tmp_path: Path) -> None:
    line = _one_error_line(run_cli("run", "--task", "open", "--judge-url", server.url,
                                   "--judge-model", "mute", "--out", str(tmp_path / "run")))
    assert "gave no parsable grade" in line and "評価: N" in line
    assert not (tmp_path / "run").exists()


# -- the `open` task and its data -----------------------------------------------------------

def test_open_task_data_and_elyza_columns(tmp_path: Path) -> None:
    from promptsearch.pipelines.data.taskdata import load_task_data
    from promptsearch.pipelines.tasks import load_task

    task = load_task("open")
    data = load_task_data(task)
    rows = [*data.fewshot, *data.validation, *data.test]
    assert len(rows) >= 40 and min(len(data.validation), len(data.test)) >= 12
    kinds = {r["id"].split("-")[1] for r in rows}
    assert kinds == {"explain", "rewrite", "extract", "reason", "creative"}
    elyza = tmp_path / "elyza.csv"
    elyza.write_text("input,output,eval_aspect\n" + "".join(
        f"質問{i},答え{i},基準{i}\n" for i in range(10)), encoding="utf-8")
    loaded = load_task_data(task, str(elyza))
    every = [*loaded.fewshot, *loaded.validation, *loaded.test]
    assert sorted(r["id"] for r in every) == [f"elyza-{i:03d}" for i in range(1, 11)]
    assert {r["reference"] for r in every} == {f"答え{i}" for i in range(10)}


def test_open_rows_without_a_grade_are_left_out_of_the_mean() -> None:
    from promptsearch.pipelines.tasks import load_task

    task = load_task("open")
    rows = [{"judge_score": 4.0}, {"judge_score": None}, {"judge_score": 2.0},
            {"judge_score": None}]
    assert task.aggregate(rows) == {"judge_score": 3.0, "judge_unparsable": 50.0}
    with pytest.raises(JudgeError, match="no parsable grade for any of 2 answers"):
        task.aggregate([{"judge_score": None}] * 2)


# -- compare --judge: both orders --------------------------------------------------------------

def _fake_run(path: Path, outputs: list[str]) -> Path:
    rows = [json.loads(line) for line in (OPEN_DATA / "test.jsonl").open()][:len(outputs)]
    (path / "predictions").mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"task": "open", "metric": "judge_score"}))
    with (path / "predictions" / "test.jsonl").open("w") as fh:
        for row, output in zip(rows, outputs, strict=True):
            fh.write(json.dumps({**row, "output": output, "judge_score": 3.0},
                                ensure_ascii=False) + "\n")
    return path


def test_compare_by_judge_asks_both_orders(server: _ScriptedServer, tmp_path: Path) -> None:
    long_answers = ["とても詳しく丁寧な回答です。" * 3] * 8
    short = ["短い"] * 6 + ["とても詳しく丁寧な回答です。" * 4] * 2
    a = _fake_run(tmp_path / "a", long_answers)
    b = _fake_run(tmp_path / "b", short)
    before = len(server.requests)
    result = run_cli("compare", str(a), str(b), "--judge-url", server.url,
                     "--judge-model", "longer")
    assert result.returncode == 0, result.stderr
    assert len(server.requests) - before == 16  # 8 rows x 2 orders
    assert re.search(r"first better\s+6 ", result.stdout), result.stdout
    assert re.search(r"second better\s+2 ", result.stdout), result.stdout
    assert "both orders asked" in result.stdout
    biased = run_cli("compare", str(a), str(b), "--judge-url", server.url,
                     "--judge-model", "first")
    assert biased.returncode == 0, biased.stderr
    assert re.search(r"tie\s+8 ", biased.stdout), biased.stdout  # position bias cancels out
    assert "cannot tell first and second apart" in biased.stdout


# -- on the real engine ----------------------------------------------------------------------

@pytest.mark.engine
def test_search_on_open_with_the_embedded_model_as_judge(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        "templates: [plain, polite]\nfewshot: {k: [0, 1], selector: [first], "
        "order: [as_selected], seed: [0]}\nsampling: {temperature: [0.0], top_p: [1.0], "
        "max_tokens: [128], repetition_penalty: [1.0], stop: {none: []}, seed: 0}\n"
        "parse: {strip: [strip]}\nchat: [false]\n", encoding="utf-8")
    out = tmp_path / "run"
    args = ("run", "--task", "open", "--judge", "gemma-3-270m", "--space", str(space),
            "--trials", "2", "--max-validation", "6", "--max-test", "4", "--chunks", "2")
    result = run_cli(*args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "judge: gemma-3-270m (engine, prompt v1)" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    judge = summary["judge"]
    assert (judge["model"], judge["kind"], judge["prompt_version"]) == ("gemma-3-270m",
                                                                        "engine", 1)
    assert set(judge["unparsable_percent"]) == {"validation", "test"}
    assert judge["cost"]["total"]["calls"] + judge["cost"]["total"]["cached"] > 0
    assert summary["metric"] == "judge_score"
    rows = [json.loads(line) for line in (out / "predictions/validation.jsonl").open()]
    assert len(rows) == 6 and all("judge_reply" in r for r in rows)
    assert all(r["judge_score"] is None or 1 <= r["judge_score"] <= 5 for r in rows)
    graded = [r["judge_score"] for r in rows if r["judge_score"] is not None]
    assert summary["best"]["validation"] == pytest.approx(sum(graded) / len(graded))
    assert "judge: gemma-3-270m" in result.stdout
    again = run_cli(*args, "--out", str(tmp_path / "again"))  # same cache: nothing graded twice
    assert again.returncode == 0, again.stderr
    cost = json.loads((tmp_path / "again/summary.json").read_text())["judge"]["cost"]["total"]
    assert cost["calls"] == 0 and cost["cached"] > 0
    # eval of the run's best.yaml with the same judge gives the run's test score (the answers
    # and the grades come from the cache).
    evaluated = run_cli("eval", "--task", "open", "--config", str(out / "best.yaml"),
                        "--split", "test", "--max-examples", "4", "--judge", "gemma-3-270m",
                        "--out", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())["metrics"]
    assert metrics["judge_score"] == pytest.approx(summary["best"]["test"])


@pytest.mark.engine
def test_vllm_openai_server_with_a_real_chat_model(tmp_path: Path) -> None:
    """vLLM's own OpenAI-compatible server with SmolLM2-135M-Instruct: the client reads its
    replies over real HTTP, the cache answers a re-run without one request, and a model this
    small, which does not follow the Japanese rubric, is reported as never grading."""
    from promptsearch.pipelines.engine.models import resolve_model
    from promptsearch.pipelines.judge.setup import check_judge

    model_dir = resolve_model("smollm2-135m-instruct")
    port = free_ports(1)[0]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0",
           "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    log = (tmp_path / "vllm.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
         "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "4096", "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        import httpx

        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "vllm.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "vLLM's server did not start in 300 s"
            time.sleep(2)

        def served() -> float:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return sum(float(m) for m in re.findall(
                r'^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$', text, re.M))

        judge = HttpJudge(url, "smollm2", cache=tmp_path / "cache")
        grades, cost = asyncio.run(grade_answers(judge, _items(2)))
        assert cost.calls >= 2 and cost.output_tokens > 0
        for grade in grades:  # whatever it says, a grade is a parsed 1-5 or recorded as none
            assert grade.value == parse_grade(grade.reply.split("\n--- retry ---\n")[-1])
            assert grade.retried == (parse_grade(grade.reply.split("\n--- retry ---\n")[0])
                                     is None)
        requests = served()
        again = HttpJudge(url, "smollm2", cache=tmp_path / "cache")
        grades2, cost2 = asyncio.run(grade_answers(again, _items(2)))
        assert [g.value for g in grades2] == [g.value for g in grades]
        assert cost2.calls == 0 and served() == requests
        if all(g.value is None for g in grades):
            with pytest.raises(JudgeError, match="gave no parsable grade for any of 2"):
                check_judge(again, [json.loads(line) for line in
                                    (OPEN_DATA / "validation.jsonl").open()][:2])
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_judge_prompt_is_japanese_and_versioned() -> None:
    from promptsearch.pipelines.judge import JUDGE_PROMPT_VERSION
    from promptsearch.pipelines.judge.prompts import RUBRIC

    prompt: JudgePrompt = grade_prompt(question="q", reference="r", eval_aspect="e", answer="a")
    assert JUDGE_PROMPT_VERSION >= 1
    assert all(f"{n}:" in RUBRIC for n in range(1, 6)) and "減点" in RUBRIC
    assert prompt.prefix == "評価:"
