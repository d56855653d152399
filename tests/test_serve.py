"""`promptsearch serve` on a finished run: real Ray Serve over real HTTP.

The run is made in-process; each server is a process of its own (its own Ray instance and
engine), stopped with Ctrl-C as a user would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from bench.serve_load import RUN_ARGS, run_step, task_bodies
from tests.conftest import REPO, engine_core_pids, run_cli

pytestmark = pytest.mark.engine

TOKEN = "test-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, run_dir: Path, *extra: str) -> None:
        self.engines_before: set[int] = set()  # engine cores before this server started
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "promptsearch.search", "serve", str(run_dir), "--port",
             str(self.port), "--engines", "1", *extra], cwd=REPO, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()[-3000:]
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).ok:
                    return
            except (requests.ConnectionError, requests.Timeout):  # proxy up, app deploying
                pass
            time.sleep(2)
        self.stop()
        raise TimeoutError("server did not become healthy")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=120)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) search with the chat model, so the OpenAI chat endpoint works too."""
    run_dir = tmp_path_factory.mktemp("served") / "run"
    result = run_cli("run", *RUN_ARGS, "--out", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def server(finished_run: Path) -> Iterator[Server]:
    srv = Server(finished_run, "--auth-token", TOKEN, "--max-tokens", "64")
    yield srv
    srv.stop()


def _post(server: Server, path: str, body: object, token: str | None = TOKEN,
          raw: bytes | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = raw if raw is not None else json.dumps(body, ensure_ascii=False).encode()
    return requests.post(server.url + path, data=data, headers=headers, timeout=300)


def _test_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in
            (run_dir / "predictions/test.jsonl").read_text().splitlines()]


def test_single_and_batch_answers_equal_the_runs_test_outputs(server: Server,
                                                              finished_run: Path) -> None:
    rows = _test_rows(finished_run)
    inputs = [{"id": r["id"], "context": r["context"], "question": r["question"]} for r in rows]
    single = _post(server, "/v1/qa", inputs[0])
    assert single.status_code == 200, single.text
    assert single.json()["output"] == rows[0]["output"]
    assert single.json()["prompt_tokens"] == rows[0]["prompt_tokens"]
    batch = _post(server, "/v1/qa", {"inputs": inputs})
    assert batch.status_code == 200, batch.text
    assert [r["output"] for r in batch.json()["results"]] == [r["output"] for r in rows]
    assert [r["id"] for r in batch.json()["results"]] == [r["id"] for r in rows]


def test_fifty_concurrent_requests_all_answered(server: Server, finished_run: Path) -> None:
    rows = _test_rows(finished_run)
    bodies = [{"context": rows[i % len(rows)]["context"],
               "question": rows[i % len(rows)]["question"]} for i in range(50)]
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda b: _post(server, "/v1/qa", b), bodies))
    assert [a.status_code for a in answers] == [200] * 50
    # Each answer is for its own request: the prompt token count is a function of the input.
    # (Outputs are not compared one by one: vLLM's CPU kernels are not bit-identical across
    # batch compositions, so under 50-way batching a rare greedy output can differ.)
    assert [a.json()["prompt_tokens"] for a in answers] == \
        [rows[i % len(rows)]["prompt_tokens"] for i in range(50)]
    assert all(isinstance(a.json()["output"], str) and a.json()["output_tokens"] > 0
               for a in answers)


def test_openai_client_chat_completions_and_models(server: Server) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=TOKEN)
    assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct"]
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct", max_tokens=16, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert reply.choices[0].message.content
    assert 0 < reply.usage.completion_tokens <= 16


@pytest.mark.parametrize(("path", "body", "raw", "token", "status", "message"), [
    ("/v1/qa", {"context": "c"}, None, TOKEN, 422, "missing field 'question'"),
    ("/v1/qa", {"context": "c", "question": 3}, None, TOKEN, 422, "must be a string"),
    ("/v1/qa", {"context": "あ" * 9000, "question": "q"}, None, TOKEN, 413, "longer than"),
    ("/v1/qa", None, b"{" + b" " * 300_000 + b"}", TOKEN, 413, "body larger"),
    ("/v1/qa", {"inputs": [{"context": "c", "question": "q"}] * 40}, None, TOKEN, 413,
     "batch of 40"),
    ("/v1/qa", None, b'{"context": "\xff\xfe", "question": "q"}', TOKEN, 400, "UTF-8"),
    ("/v1/qa", None, b'{"context": ', TOKEN, 400, "not valid JSON"),
    ("/v1/qa", None, b'{"a":' * 50 + b"1" + b"}" * 50, TOKEN, 400, "nested deeper"),
    ("/v1/summary", {"text": "t"}, None, TOKEN, 404, "serves task 'qa'"),
    ("/v1/qa", {"context": "c", "question": "q"}, None, None, 401, "bearer token"),
    ("/v1/qa", {"context": "c", "question": "q"}, None, "wrong", 401, "bearer token"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 100000}, None, TOKEN, 422, "max_tokens"),
    ("/v1/chat/completions", {"messages": "hi"}, None, TOKEN, 422, "'messages'"),
])
def test_bad_requests_get_clear_4xx(server: Server, path: str, body: object,
                                    raw: bytes | None, token: str | None, status: int,
                                    message: str) -> None:
    response = _post(server, path, body, token=token, raw=raw)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


def test_prompt_injection_in_a_field_is_data(server: Server) -> None:
    response = _post(server, "/v1/qa", {"context": "{{ ''.__class__.__mro__ }}{% raw %}",
                                        "question": "{{ 7*7 }}"})
    assert response.status_code == 200, response.text


# Ray Serve admits max_ongoing + max_queued requests at once; with at most max_queued clients
# the queue can never be full, so no request may be turned away.
ONGOING, QUEUED = 1, 4


@pytest.fixture(scope="module")
def small_server(finished_run: Path, server: Server) -> Iterator[Server]:
    """The second (and last) server of the module: small limits, and no --auth-token, so
    that it also shows a server with auth off; the module's last test stops it with Ctrl-C."""
    # The load tests come last: stop the main server first, since two servers and the test
    # session's engines do not fit in 24 GB together.
    server.stop()
    before = engine_core_pids()
    srv = Server(finished_run, "--max-ongoing-requests", str(ONGOING),
                 "--max-queued-requests", str(QUEUED), "--retry-after", "1.5")
    srv.engines_before = before
    yield srv
    srv.stop()


def test_load_ramp_below_capacity_answers_everything(small_server: Server,
                                                     finished_run: Path) -> None:
    _, bodies = task_bodies(finished_run)
    steps = [run_step(small_server.url + "/v1/qa", bodies, c, 4) for c in (1, 2, QUEUED)]
    for step in steps:
        assert step.ok > 0 and step.errors == 0 and step.rejected == 0, step
        assert step.statuses == {"200": step.ok}, step


def test_load_above_capacity_gets_clean_503s_and_stays_healthy(small_server: Server,
                                                               finished_run: Path) -> None:
    _, bodies = task_bodies(finished_run)
    step = run_step(small_server.url + "/v1/qa", bodies, 4 * (ONGOING + QUEUED), 6)
    assert set(step.statuses) == {"200", "503"} and step.errors == 0, step
    assert step.ok > 0 and step.rejected > 0, step
    assert "max_queued_requests" in step.reject_sample["body"], step.reject_sample
    assert step.reject_sample["retry_after"] == "2", step.reject_sample
    assert requests.get(small_server.url + "/healthz", timeout=10).json()["status"] == "ok"
    answer = _post(small_server, "/v1/qa", bodies[0], token=None)
    assert answer.status_code == 200 and isinstance(answer.json()["output"], str), answer.text


def test_auth_off_and_shutdown_leaves_nothing_running(small_server: Server) -> None:
    """Runs last (it stops the server): the small server has no --auth-token."""
    assert engine_core_pids() - small_server.engines_before  # the server's own engine
    answer = _post(small_server, "/v1/qa",
                   {"context": "東京は日本の首都です。", "question": "日本の首都は？"}, token=None)
    assert answer.status_code == 200 and answer.json()["output"] is not None
    assert small_server.stop() == 130  # Ctrl-C
    time.sleep(3)
    assert not (engine_core_pids() - small_server.engines_before)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{small_server.url}/healthz", timeout=2)
