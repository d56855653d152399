"""`promptsearch serve` on a finished run: real Ray Serve over real HTTP.

The run is made in-process; each server is a process of its own (its own Ray instance and
engine), stopped with Ctrl-C as a user would. The run and its servers share a generation cache
of their own. The checks of the command line that refuse to serve come first and start no
engine."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from bench.serve_load import RUN_ARGS, run_step, task_bodies
from promptsearch.pipelines.engine.cache import DB_NAME
from promptsearch.pipelines.engine.models import CACHE_ENV, cache_dir
from tests.conftest import REPO, engine_cores, run_cli
from tests.sshd import free_ports

TOKEN = "test-token"


@pytest.mark.parametrize(("args", "env", "message"), [
    (("--auth-token", ""), {}, "is empty"),
    (("--auth-token", "   "), {}, "is empty"),
    ((), {"PROMPTSEARCH_AUTH_TOKEN": ""}, "is empty"),
    (("--host", "0.0.0.0"), {}, "other machines can reach"),
    (("--host", "::"), {}, "other machines can reach"),
    (("--no-auth", "--auth-token", "t"), {}, "contradicts"),
    (("--auth-token", "two words"), {}, "without spaces"),
])
def test_serve_refuses_to_run_open_by_accident(tmp_path: Path, args: tuple[str, ...],
                                               env: dict[str, str], message: str) -> None:
    """Before any run file is read or engine started: an empty token is not "auth off", and
    a host other machines can reach needs a token or an explicit --no-auth."""
    result = run_cli("serve", str(tmp_path / "no-run"), *args, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_no_auth_on_a_public_host_is_a_decision_the_user_may_make(tmp_path: Path) -> None:
    result = run_cli("serve", str(tmp_path / "no-run"), "--host", "0.0.0.0", "--no-auth")
    assert result.returncode == 2
    assert "no run.yaml" in result.stderr, result.stderr  # past the auth checks


def _cache(run_dir: Path) -> Path:
    """The generation cache of the module's run and servers (its models: the usual ones)."""
    return run_dir.parent / "cache"


class Server:
    def __init__(self, run_dir: Path, *extra: str) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "promptsearch.search", "serve", str(run_dir), "--port",
             str(self.port), "--engines", "1", *extra], cwd=REPO, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**env, CACHE_ENV: str(_cache(run_dir))})
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
    _cache(run_dir).mkdir()
    (_cache(run_dir) / "models").symlink_to(cache_dir() / "models")
    result = run_cli("run", *RUN_ARGS, "--out", str(run_dir),
                     env={CACHE_ENV: str(_cache(run_dir))})
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def server(finished_run: Path) -> Iterator[Server]:
    srv = Server(finished_run, "--auth-token", TOKEN, "--max-tokens", "64")
    yield srv
    srv.stop()


def _post(server: Server, path: str, body: object, token: str | None = TOKEN,
          raw: bytes | None = None, method: str = "POST") -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = raw if raw is not None else json.dumps(body, ensure_ascii=False).encode()
    return requests.request(method, server.url + path, data=data if method == "POST" else None,
                            headers=headers, timeout=300)


def _engine_core(server: Server, wait: float = 120) -> psutil.Process:
    """The vLLM engine process of the server's one engine (inside its engine actor). Waits
    while there is none: an engine Ray is restarting (after a kill, or its memory monitor) has
    no engine process until its actor starts a new one."""
    deadline = time.monotonic() + wait
    while True:
        cores = engine_cores(server.proc.pid)
        if len(cores) == 1 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert len(cores) == 1, (cores, _engine_cores_and_ancestors())
    return cores[0]


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _engine_cores_and_ancestors() -> list[list[str]]:
    """Every engine core on the machine with its parents (what a failed search above shows)."""
    return [[f"{p.pid} {' '.join(p.cmdline())[:60]}" for p in [proc, *proc.parents()]]
            for proc in engine_cores()]


_INTERNALS = re.compile(r"\d+\.\d+\.\d+\.\d+|pid=|Ray|Actor|Traceback|File \"")


def _test_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in
            (run_dir / "predictions/test.jsonl").read_text().splitlines()]


@pytest.mark.engine
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


@pytest.mark.engine
def test_a_row_the_run_answered_comes_from_the_generation_cache(server: Server,
                                                                finished_run: Path) -> None:
    """Serve's engines sit behind the run's generation cache: swap the cached generation of
    a test row for another text and the server answers with that text, without generating."""
    row = _test_rows(finished_run)[0]
    body = {"id": row["id"], "context": row["context"], "question": row["question"]}
    database = sqlite3.connect(_cache(finished_run) / "generations" / DB_NAME, timeout=60)
    entries: list[tuple[str, bytes]] = []
    try:
        entries = [(key, record) for key, record in
                   database.execute("SELECT key, record FROM generations")
                   if json.loads(record)["text"] == row["raw_output"]
                   and json.loads(record)["prompt_tokens"] == row["prompt_tokens"]]
        assert entries, "the run's generation of the row is not in the cache"
        swapped = f"キャッシュ {uuid.uuid4().hex}"
        with database:
            database.executemany("UPDATE generations SET record = ? WHERE key = ?", [
                (json.dumps({**json.loads(record), "text": swapped}), key)
                for key, record in entries])
        answer = _post(server, "/v1/qa", body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["raw_output"] == swapped, answer.json()
    finally:
        with database:
            database.executemany("UPDATE generations SET record = ? WHERE key = ?",
                                 [(record, key) for key, record in entries])
        database.close()
    assert _post(server, "/v1/qa", body).json()["raw_output"] == row["raw_output"]


@pytest.mark.engine
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


@pytest.mark.engine
def test_openai_client_chat_completions_and_models(server: Server) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=TOKEN)
    assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct"]
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct", max_tokens=16, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert reply.choices[0].message.content
    assert 0 < reply.usage.completion_tokens <= 16


@pytest.mark.engine
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
    # issue 12 section 6: bodies are models that refuse what they do not define
    ("/v1/qa", {"context": "c", "question": "q", "temperature": 2}, None, TOKEN, 422,
     "unknown field 'temperature'"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 0}, None, TOKEN, 422, "'max_tokens'"),
    ("/v1/chat/completions", None, b'{"messages": [{"role": "user", "content": "hi"}], '
                                   b'"temperature": NaN}', TOKEN, 400, "NaN"),
    ("/v1/chat/completions", None, b'{"messages": [{"role": "user", "content": "hi"}], '
                                   b'"top_p": 1e999}', TOKEN, 422, "finite"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True},
     None, TOKEN, 422, "'stream'"),
    # nesting that json.loads accepts but a recursive walk does not, and nesting it refuses
    ("/v1/qa", None, b"[" * 400 + b"]" * 400, TOKEN, 400, "nested deeper"),
    ("/v1/qa", None, b"[" * 20000 + b"]" * 20000, TOKEN, 400, "nested deeper"),
    # auth first: no route, task name or API description for a caller without the token
    ("/v1/summary", {"text": "t"}, None, None, 401, "bearer token"),
    ("/nowhere", {}, None, None, 401, "bearer token"),
    ("/v1/qa", {"context": "c", "question": "q"}, None, TOKEN + "x", 401, "bearer token"),
    ("/v1/qa", {"context": "c", "question": "q"}, None, TOKEN[:-1] + "X", 401, "bearer token"),
])
def test_bad_requests_get_clear_4xx(server: Server, path: str, body: object,
                                    raw: bytes | None, token: str | None, status: int,
                                    message: str) -> None:
    response = _post(server, path, body, token=token, raw=raw)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


@pytest.mark.engine
@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc", "/v1/models"])
def test_nothing_but_health_without_the_token(server: Server, path: str) -> None:
    assert _post(server, path, None, token=None, method="GET").status_code == 401
    assert _post(server, path, None, method="GET").status_code == \
        (200 if path == "/v1/models" else 404)
    health = requests.get(server.url + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}


@pytest.mark.engine
def test_a_chunked_body_is_cut_at_the_limit(server: Server) -> None:
    """No Content-Length, 300 kB sent and the body never finished: the answer is 413 as soon
    as the limit is passed, not a wait for a body that may never end."""
    chunk = b"x" * 10_000
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as conn:
        conn.sendall(b"POST /v1/qa HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
        for _ in range(30):
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status_line = conn.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"413", status_line


@pytest.mark.engine
def test_prompt_injection_in_a_field_is_data(server: Server) -> None:
    response = _post(server, "/v1/qa", {"context": "{{ ''.__class__.__mro__ }}{% raw %}",
                                        "question": "{{ 7*7 }}"})
    assert response.status_code == 200, response.text


@pytest.mark.engine
def test_a_dead_engine_is_restarted_and_answers_503_meanwhile(server: Server,
                                                              finished_run: Path) -> None:
    """The vLLM engine process dies inside a live engine actor: requests get a 503 with
    Retry-After (no Ray internals), /healthz says so, and the engine comes back by itself."""
    row = _test_rows(finished_run)[0]
    body = {"context": row["context"], "question": row["question"]}
    core = _engine_core(server)
    core.kill()
    core.wait(30)
    deadline = time.monotonic() + 60
    while (answer := _post(server, "/v1/qa", body)).status_code == 200:
        assert time.monotonic() < deadline, "the dead engine was never noticed"
        time.sleep(0.5)
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["Retry-After"]) >= 1
    message = answer.json()["error"]["message"]
    assert "restart" in message and not _INTERNALS.search(message), message
    health = requests.get(server.url + "/healthz", timeout=10)
    assert health.status_code == 503 and health.json() == {"status": "unavailable"}
    deadline = time.monotonic() + 400
    while requests.get(server.url + "/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the engine did not come back"
        time.sleep(2)
    assert _engine_core(server).pid != core.pid
    answer = _post(server, "/v1/qa", body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"] == row["output"]


# Ray Serve admits max_ongoing + max_queued requests at once; with at most max_queued clients
# the queue can never be full, so no request may be turned away.
ONGOING, QUEUED = 1, 4
ENGINE_TIMEOUT = 15  # seconds; one request at a time takes one or two


@pytest.fixture(scope="module")
def small_server(finished_run: Path, server: Server) -> Iterator[Server]:
    """The second (and last) server of the module: small limits, and no --auth-token, so
    that it also shows a server with auth off; the module's last test stops it with Ctrl-C."""
    # The load tests come last: stop the main server first, since two servers and the test
    # session's engines do not fit in 24 GB together.
    server.stop()
    srv = Server(finished_run, "--max-ongoing-requests", str(ONGOING),
                 "--max-queued-requests", str(QUEUED), "--retry-after", "1.5",
                 "--engine-timeout", str(ENGINE_TIMEOUT))
    yield srv
    srv.stop()


@pytest.mark.engine
def test_load_ramp_below_capacity_answers_everything(small_server: Server,
                                                     finished_run: Path) -> None:
    _, bodies = task_bodies(finished_run)
    steps = [run_step(small_server.url + "/v1/qa", bodies, c, 4) for c in (1, 2, QUEUED)]
    for step in steps:
        assert step.ok > 0 and step.errors == 0 and step.rejected == 0, step
        assert step.statuses == {"200": step.ok}, step


@pytest.mark.engine
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


@pytest.mark.engine
def test_an_engine_that_does_not_answer_times_out_with_504(small_server: Server,
                                                           finished_run: Path) -> None:
    _, bodies = task_bodies(finished_run)
    new = {**bodies[0], "question": f"{bodies[0]['question']} {uuid.uuid4().hex}"}  # not cached
    core = _engine_core(small_server)
    core.suspend()  # alive but silent: the health check still passes, the request cannot
    try:
        start = time.monotonic()
        answer = _post(small_server, "/v1/qa", new, token=None)
        waited = time.monotonic() - start
    finally:
        core.resume()
    assert answer.status_code == 504, answer.text
    assert "did not answer within" in answer.json()["error"]["message"]
    assert ENGINE_TIMEOUT <= waited < ENGINE_TIMEOUT + 30
    assert _post(small_server, "/v1/qa", bodies[0], token=None).status_code == 200


@pytest.mark.engine
def test_auth_off_and_shutdown_leaves_nothing_running(small_server: Server) -> None:
    """Runs last (it stops the server): the small server has no --auth-token."""
    core = _engine_core(small_server)
    engine = [core, core.parent(), *core.children(recursive=True)]  # vLLM's, and its actor
    answer = _post(small_server, "/v1/qa",
                   {"context": "東京は日本の首都です。", "question": "日本の首都は？"}, token=None)
    assert answer.status_code == 200 and answer.json()["output"] is not None
    assert small_server.stop() == 130  # Ctrl-C
    time.sleep(3)
    assert not [p for p in engine if _running(p)], engine
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{small_server.url}/healthz", timeout=2)


def test_a_finished_run_serves_from_its_own_directory(tmp_path: Path) -> None:
    """A run keeps the few-shot pool it used (fewshot.jsonl): serve renders from it, and needs
    neither the data nor its split any more; a run without it still needs its data."""
    import shutil

    from promptsearch.pipelines.data.readers import read_records
    from promptsearch.pipelines.data.taskdata import load_task_data
    from promptsearch.pipelines.data.writers import write_jsonl
    from promptsearch.pipelines.errors import UserError
    from promptsearch.pipelines.prompting.config import PromptConfig
    from promptsearch.pipelines.prompting.prompts import demo_pool
    from promptsearch.pipelines.tasks import TASK_DIR, load_task
    from promptsearch.search.spec import RunSpec, check_run_inputs, input_fingerprints
    from promptsearch.serve.app import PromptService, ServeLimits

    data = tmp_path / "data"
    shutil.copytree(TASK_DIR / "data" / "qa", data)
    spec = RunSpec(task="qa", data=str(data))
    spec = spec.model_copy(update={"fingerprints": input_fingerprints(spec)})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec.save(run_dir)
    task = load_task("qa")
    PromptConfig.baseline(task).save(run_dir / "best.yaml")
    demos = demo_pool(task, load_task_data(task, str(data)).fewshot)
    write_jsonl(run_dir / "fewshot.jsonl", demos)
    shutil.rmtree(data)

    assert check_run_inputs(run_dir, data=False).task == "qa"
    with pytest.raises(UserError, match="is gone since the run started"):
        check_run_inputs(run_dir)
    service = PromptService(str(run_dir), pool=None, limits=ServeLimits())  # type: ignore[arg-type]
    assert service.fewshot == demos == read_records(run_dir / "fewshot.jsonl")
    (run_dir / "fewshot.jsonl").unlink()
    with pytest.raises(UserError):
        PromptService(str(run_dir), pool=None, limits=ServeLimits())  # type: ignore[arg-type]
