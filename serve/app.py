"""Ray Serve application for a finished run: the best configuration behind HTTP.

Built on the project's own engine pool rather than ``ray.serve.llm``: the served answer must
be rendered, generated, tokenised and parsed exactly as the search saw it (``render_requests``,
``EnginePool``, ``Task.read_answer``), and the pool's engines are the ones the CPU build of vLLM
runs here. Replicas share one pool, passed by handle.

Each replica builds its FastAPI app itself (``__serve_build_asgi_app__``), so that the bearer
token check can wrap the whole app: it runs before routing, so an unauthenticated caller
learns nothing (no route, no task name, no API description). Only ``GET /healthz`` is open,
and it says ``ok`` or not, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from promptsearch.pipelines.data.readers import read_records
from promptsearch.pipelines.data.rows import output_row
from promptsearch.pipelines.data.taskdata import load_task_data
from promptsearch.pipelines.engine.pool import EnginePool, Generation
from promptsearch.pipelines.engine.sampling import Sampling
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.prompting.config import PromptConfig
from promptsearch.pipelines.prompting.prompts import demo_pool, render_requests
from promptsearch.pipelines.tasks import load_task
from promptsearch.search.spec import load_run_spec
from promptsearch.serve.bodies import ChatRequest, input_models, read_json, validate

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
AUTH_ENV = "PROMPTSEARCH_AUTH_TOKEN"

# Pool errors about one request (it does not fit, it cannot be rendered): the caller's to fix.
_REQUEST_ERRORS = ("prompt has ", "cannot render request")


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on what one request may ask for and how long it may take; beyond them the
    answer is a clear 4xx (or 503/504 when the engines cannot answer)."""

    auth_token: str | None = None
    """Bearer token every request but ``/healthz`` must carry; None serves without auth
    (the CLI allows that only on a loopback host or with ``--no-auth``)."""
    max_body_bytes: int = 256 * 1024
    max_batch: int = 32
    max_input_chars: int = 8000
    max_tokens: int = 512
    max_json_depth: int = 16
    body_timeout_s: float = 30.0
    """Time for the request body to arrive."""
    engine_timeout_s: float = 240.0
    """Time for the engines to answer one request; beyond it, 504."""
    health_interval_s: float = 1.0
    """How often each replica asks every engine whether it is alive."""
    health_timeout_s: float = 3.0
    """An engine that does not answer the health check within this is down (restarting)."""
    restart_retry_after_s: float = 10.0
    """``Retry-After`` of the 503 sent while an engine is down."""

    def __post_init__(self) -> None:
        if self.auth_token is not None and not self.auth_token.strip():
            raise UserError("--auth-token / PROMPTSEARCH_AUTH_TOKEN is empty; set a token, "
                            "or pass --no-auth to serve without authentication")


def checked_auth_token(host: str, token: str | None, *, no_auth: bool) -> str | None:
    """The bearer token the server will require, or None with ``--no-auth``.

    Serving without a token must be a decision, not an accident: an empty token (an unset
    variable in a script) is refused rather than read as "no auth", and a host other machines
    can reach needs a token unless ``--no-auth`` says otherwise.
    """
    if token is None and AUTH_ENV in os.environ:  # click reads an empty variable as unset
        token = os.environ[AUTH_ENV]
    if token is not None and not token.strip():
        raise UserError(f"--auth-token / {AUTH_ENV} is empty; set a token, or pass --no-auth "
                        "to serve without authentication")
    if token is not None and not (token.isascii() and token.isprintable() and " " not in token):
        raise UserError(f"--auth-token / {AUTH_ENV}: use printable ASCII without spaces (a "
                        "bearer token travels in an HTTP header)")
    if no_auth:
        if token is not None:
            raise UserError(f"--no-auth contradicts the token given (--auth-token or {AUTH_ENV});"
                            " drop one of them")
        return None
    if token is None and not _loopback_only(host):
        raise UserError(f"--host {host}: other machines can reach this address and no token is "
                        f"set; pass --auth-token TOKEN (or set {AUTH_ENV}), or --no-auth to "
                        "serve without authentication")
    return token


def _loopback_only(host: str) -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError):
        return False
    return bool(addresses) and all(
        ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


class _BearerFirst:
    """ASGI wrapper: a request without the right bearer token gets 401 before the app (and
    its router) sees it. Tokens are compared in constant time."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":  # none are served
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] == "http" and scope["path"] != HEALTH_PATH:
            given = next((value for name, value in scope["headers"]
                          if name == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                response = _error(401, "missing or wrong bearer token",
                                  {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "code": status}}, status_code=status,
                        headers=headers)


class PromptService:
    """The Serve deployment body (``serve.deployment`` and ``serve.ingress`` applied in
    ``build_app``)."""

    def __init__(self, run_dir: str, pool: EnginePool, limits: ServeLimits) -> None:
        run = Path(run_dir)
        spec = load_run_spec(run)
        self.config = PromptConfig.load(run / "best.yaml")
        self.task = load_task(self.config.task)
        stored = run / "fewshot.jsonl"
        if stored.is_file():
            self.fewshot = read_records(stored)
        else:  # a run made before runs kept their demos: split its data again
            data = load_task_data(self.task, spec.data, seed=spec.seed)
            self.fewshot = demo_pool(self.task, data.fewshot)
        self.model = spec.model
        self.pool = pool
        self.limits = limits
        self.input_model, self.batch_model = input_models(self.task.input_fields,
                                                          self.task.name)
        self.engines_ok = True
        self._engines_down: asyncio.Event | None = None  # created on the serving loop
        self._watcher: asyncio.Task[None] | None = None

    # -- the app ---------------------------------------------------------------------------
    def __serve_build_asgi_app__(self) -> Any:
        """Called by Ray Serve in each replica after ``__init__``."""

        @contextlib.asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            self._engines_down = asyncio.Event()
            self._watcher = asyncio.create_task(self._watch_engines())
            yield
            self._watcher.cancel()

        api = FastAPI(title="promptsearch", docs_url=None, redoc_url=None, openapi_url=None,
                      lifespan=lifespan)
        api.add_exception_handler(StarletteHTTPException, _http_error)  # routing's 404/405 too
        api.add_exception_handler(Exception, _internal_error)
        api.add_api_route(HEALTH_PATH, self.healthz, methods=["GET"])
        api.add_api_route("/v1/models", self.models, methods=["GET"])
        api.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])
        api.add_api_route("/v1/{task}", self.task_endpoint, methods=["POST"])
        token = self.limits.auth_token
        return api if token is None else _BearerFirst(api, token)

    # -- engine health ---------------------------------------------------------------------
    async def _watch_engines(self) -> None:
        """Keep ``engines_ok`` true to the engines: an engine whose vLLM process died exits
        and is restarted by Ray, and answers no health check until its model is loaded."""
        while True:
            try:
                ok = all(await self.pool.health_async(timeout=self.limits.health_timeout_s))
            except Exception:  # the watch must go on; an unknown state is not "ok"
                log.exception("engine health check failed")
                ok = False
            if ok != self.engines_ok:
                log.warning("engines %s", "back up" if ok else "down: answering 503")
            self._set_engines_ok(ok)
            await asyncio.sleep(self.limits.health_interval_s)

    def _set_engines_ok(self, ok: bool) -> None:
        self.engines_ok = ok
        if self._engines_down is not None:
            if ok:
                self._engines_down.clear()
            else:
                self._engines_down.set()

    def _unavailable(self, message: str) -> HTTPException:
        retry = str(max(1, math.ceil(self.limits.restart_retry_after_s)))
        return HTTPException(503, message, headers={"Retry-After": retry})

    def _require_engines(self) -> None:
        if not self.engines_ok:
            raise self._unavailable("an engine is restarting; retry later")

    async def _generate(self, requests: list[Any],
                        sampling: Sampling | None) -> list[Generation]:
        """Generate within the engine timeout; an engine failure is a 503, never a 4xx that
        carries Ray's internal error text."""
        self._require_engines()
        generation = asyncio.ensure_future(self.pool.generate_async(requests, sampling))
        waits = {generation}
        if self._engines_down is not None:  # an engine going down ends the wait at once
            waits.add(asyncio.ensure_future(self._engines_down.wait()))
        try:
            await asyncio.wait(waits, timeout=self.limits.engine_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                if not task.done():
                    task.cancel()
        if not generation.done() or generation.cancelled():
            if not self.engines_ok:
                raise self._unavailable("an engine went down; retry later")
            raise HTTPException(504, f"the engines did not answer within "
                                     f"{self.limits.engine_timeout_s:g} s; retry later",
                                headers={"Retry-After": "5"})
        gens = generation.result()
        for gen in gens:
            if gen.error is None:
                continue
            if gen.error.startswith(_REQUEST_ERRORS):
                raise HTTPException(422, f"cannot generate: {gen.error}")
            log.warning("generation failed: %s", gen.error)
            self._set_engines_ok(False)  # until the next health check says otherwise
            raise self._unavailable("the engine failed and is being restarted; retry later")
        return gens

    # -- endpoints -------------------------------------------------------------------------
    async def healthz(self) -> JSONResponse:
        if self.engines_ok:
            return JSONResponse({"status": "ok"})
        retry = str(max(1, math.ceil(self.limits.restart_retry_after_s)))
        return JSONResponse({"status": "unavailable"}, status_code=503,
                            headers={"Retry-After": retry})

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model, "object": "model",
                                            "owned_by": "promptsearch"}]}

    async def _body(self, request: Request) -> Any:
        return await read_json(request, max_bytes=self.limits.max_body_bytes,
                               max_depth=self.limits.max_json_depth,
                               timeout_s=self.limits.body_timeout_s)

    def _check_length(self, text: str, where: str) -> None:
        if len(text) > self.limits.max_input_chars:
            raise HTTPException(413, f"{where} is longer than {self.limits.max_input_chars} "
                                     "characters")

    async def task_endpoint(self, task: str, request: Request) -> dict[str, Any]:
        if task != self.task.name:
            raise HTTPException(404, f"this server serves task {self.task.name!r}, not {task!r}")
        body = await self._body(request)
        batch = isinstance(body, dict) and "inputs" in body
        if batch and isinstance(body["inputs"], list) \
                and len(body["inputs"]) > self.limits.max_batch:
            raise HTTPException(413, f"batch of {len(body['inputs'])} is larger than "
                                     f"{self.limits.max_batch}")
        items = validate(self.batch_model, body).inputs if batch \
            else [validate(self.input_model, body)]
        examples = []
        for i, item in enumerate(items):
            where = f"inputs[{i}]" if batch else "body"
            for name in self.task.input_fields:
                self._check_length(getattr(item, name), f"{where}: field {name!r}")
            examples.append({**item.model_dump(exclude={"id"}),
                             self.task.id_field: "" if item.id is None else str(item.id)})
        requests = render_requests(self.task, self.config, examples, self.fewshot)
        gens = await self._generate(requests, self.config.sampling)
        results = []
        for example, gen in zip(examples, gens, strict=True):
            row = output_row(example, gen, task=self.task, config=self.config)
            results.append({**{k: v for k, v in row.items() if k not in self.task.input_fields},
                            "id": row["id"] or None})
        return {"results": results} if batch else results[0]

    async def chat_completions(self, request: Request) -> dict[str, Any]:
        body = validate(ChatRequest, await self._body(request))
        for i, message in enumerate(body.messages):
            self._check_length(message.content, f"messages[{i}]")
        if not self.pool.has_chat_template:
            raise HTTPException(400, f"model {self.model} has no chat template; use "
                                     f"/v1/{self.task.name}")
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        gen = (await self._generate([messages], self._sampling(body)))[0]
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": self.model,
                "choices": [{"index": 0, "finish_reason": gen.finish_reason,
                             "message": {"role": "assistant", "content": gen.text}}],
                "usage": {"prompt_tokens": gen.prompt_tokens,
                          "completion_tokens": gen.output_tokens,
                          "total_tokens": gen.prompt_tokens + gen.output_tokens}}

    def _sampling(self, body: ChatRequest) -> Sampling:
        limit = self.limits.max_tokens
        max_tokens = body.max_tokens or body.max_completion_tokens or min(64, limit)
        if max_tokens > limit:
            raise HTTPException(422, f"body: field 'max_tokens' must be <= {limit} (the "
                                     f"server's --max-tokens), got {max_tokens}")
        stop = body.stop or ()
        try:
            return Sampling(temperature=body.temperature, top_p=body.top_p,
                            max_tokens=max_tokens,
                            stop=(stop,) if isinstance(stop, str) else tuple(stop),
                            seed=body.seed)
        except (ValueError, TypeError, UserError) as exc:
            raise HTTPException(422, f"body: {exc}") from None


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _error(exc.status_code, str(exc.detail), exc.headers)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request to %s failed", request.url.path)
    return _error(500, "internal error; see the server's log")


def build_app(run_dir: str | Path, pool: EnginePool, *, limits: ServeLimits | None = None,
              replicas: int = 1, max_ongoing_requests: int = 64,
              max_queued_requests: int = 256, retry_after_s: float = 1.0) -> Any:
    """The Serve application; beyond ``max_queued_requests`` waiting, Serve answers 503
    with a ``Retry-After`` header."""
    from ray import serve
    from ray.serve.config import BackpressureConfig

    deployment = serve.deployment(
        name="PromptService", num_replicas=replicas, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=max_ongoing_requests, max_queued_requests=max_queued_requests,
        backpressure_config=BackpressureConfig(retry_after_s=retry_after_s),
    )(serve.ingress()(PromptService))
    return deployment.bind(str(Path(run_dir).resolve()), pool, limits or ServeLimits())
