"""Ray Serve application for a finished run: the best configuration behind HTTP.

Built on the project's own engine pool rather than ``ray.serve.llm``: the served answer must
be rendered, generated, tokenised and parsed exactly as the search saw it (``render_requests``,
``EnginePool``, ``parse_output``), and the pool's engines are the ones the CPU build of vLLM
runs here. Replicas share one pool, passed by handle.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from promptsearch.pipelines.config import PromptConfig
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.parsing import parse_output
from promptsearch.pipelines.pool import EnginePool
from promptsearch.pipelines.prompts import demo_pool, render_requests
from promptsearch.pipelines.sampling import Sampling
from promptsearch.pipelines.taskdata import load_task_data
from promptsearch.pipelines.tasks import load_task

api = FastAPI(title="promptsearch", docs_url=None, redoc_url=None)


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on what one request may ask for; beyond them the answer is a clear 4xx."""

    auth_token: str | None = None
    max_body_bytes: int = 256 * 1024
    max_batch: int = 32
    max_input_chars: int = 8000
    max_tokens: int = 512
    max_json_depth: int = 16


def _json_depth(value: Any, depth: int = 0) -> int:
    if isinstance(value, dict):
        return max((_json_depth(v, depth + 1) for v in value.values()), default=depth + 1)
    if isinstance(value, list):
        return max((_json_depth(v, depth + 1) for v in value), default=depth + 1)
    return depth


class PromptService:
    """The Serve deployment body (``serve.deployment`` and ``serve.ingress`` applied below)."""

    def __init__(self, run_dir: str, pool: EnginePool, limits: ServeLimits) -> None:
        import yaml

        run = Path(run_dir)
        spec = yaml.safe_load((run / "run.yaml").read_text(encoding="utf-8"))
        self.config = PromptConfig.load(run / "best.yaml")
        self.task = load_task(self.config.task)
        data = load_task_data(self.task, spec.get("data"), seed=spec.get("seed", 0))
        self.fewshot = demo_pool(self.task, data.fewshot)
        self.model = spec.get("model", "model")
        self.pool = pool
        self.limits = limits

    # -- request checks -------------------------------------------------------------------
    def _check_auth(self, request: Request) -> None:
        token = self.limits.auth_token
        if token is not None and request.headers.get("authorization") != f"Bearer {token}":
            raise HTTPException(401, "missing or wrong bearer token")

    async def _body(self, request: Request) -> Any:
        self._check_auth(request)
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > self.limits.max_body_bytes:
            raise HTTPException(413, f"body larger than {self.limits.max_body_bytes} bytes")
        raw = await request.body()
        if len(raw) > self.limits.max_body_bytes:
            raise HTTPException(413, f"body larger than {self.limits.max_body_bytes} bytes")
        try:
            body = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise HTTPException(400, "body is not valid UTF-8") from None
        except (json.JSONDecodeError, RecursionError) as exc:
            raise HTTPException(400, f"body is not valid JSON: {exc}") from None
        if _json_depth(body) > self.limits.max_json_depth:
            raise HTTPException(400, f"JSON nested deeper than {self.limits.max_json_depth}")
        return body

    def _example(self, item: Any, where: str) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise HTTPException(422, f"{where}: expected an object with "
                                     f"{', '.join(self.task.input_fields)}")
        for name in self.task.input_fields:
            if name not in item:
                raise HTTPException(422, f"{where}: missing field {name!r}")
            if not isinstance(item[name], str):
                raise HTTPException(422, f"{where}: field {name!r} must be a string")
            if len(item[name]) > self.limits.max_input_chars:
                raise HTTPException(413, f"{where}: field {name!r} is longer than "
                                         f"{self.limits.max_input_chars} characters")
        return {self.task.id_field: str(item.get("id", "")), **item}

    # -- endpoints --------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "task": self.task.name, "model": self.model,
                "engines": self.pool.engines}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self._check_auth(request)
        return {"object": "list", "data": [{"id": self.model, "object": "model",
                                            "owned_by": "promptsearch"}]}

    @api.post("/v1/{task}")
    async def task_endpoint(self, task: str, request: Request) -> dict[str, Any]:
        if task != self.task.name:
            raise HTTPException(404, f"this server serves task {self.task.name!r}, not {task!r}")
        body = await self._body(request)
        batch = isinstance(body, dict) and "inputs" in body
        items = body["inputs"] if batch else [body]
        if not isinstance(items, list) or not items:
            raise HTTPException(422, "'inputs' must be a non-empty list of objects")
        if len(items) > self.limits.max_batch:
            raise HTTPException(413, f"batch of {len(items)} is larger than "
                                     f"{self.limits.max_batch}")
        examples = [self._example(item, f"inputs[{i}]" if batch else "body")
                    for i, item in enumerate(items)]
        requests = render_requests(self.task, self.config, examples, self.fewshot)
        gens = await self.pool.generate_async(requests, self.config.sampling)
        results = []
        for example, gen in zip(examples, gens, strict=True):
            if not gen.ok:
                raise HTTPException(422, f"cannot generate: {gen.error}")
            results.append({"id": example[self.task.id_field] or None,
                            "output": parse_output(gen.text, self.config.parse),
                            "raw_output": gen.text, "prompt_tokens": gen.prompt_tokens,
                            "output_tokens": gen.output_tokens,
                            "finish_reason": gen.finish_reason})
        return {"results": results} if batch else results[0]

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> dict[str, Any]:
        body = await self._body(request)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) \
                or not body["messages"]:
            raise HTTPException(422, "'messages' must be a non-empty list")
        for i, message in enumerate(body["messages"]):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise HTTPException(422, f"messages[{i}] needs string 'role' and 'content'")
            if len(message["content"]) > self.limits.max_input_chars:
                raise HTTPException(413, f"messages[{i}] is longer than "
                                         f"{self.limits.max_input_chars} characters")
        if not self.pool.has_chat_template:
            raise HTTPException(400, f"model {self.model} has no chat template; use "
                                     f"/v1/{self.task.name}")
        sampling = self._sampling(body)
        gen = (await self.pool.generate_async([body["messages"]], sampling))[0]
        if not gen.ok:
            raise HTTPException(422, f"cannot generate: {gen.error}")
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": self.model,
                "choices": [{"index": 0, "finish_reason": gen.finish_reason,
                             "message": {"role": "assistant", "content": gen.text}}],
                "usage": {"prompt_tokens": gen.prompt_tokens,
                          "completion_tokens": gen.output_tokens,
                          "total_tokens": gen.prompt_tokens + gen.output_tokens}}

    def _sampling(self, body: dict[str, Any]) -> Sampling:
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 64
        if not isinstance(max_tokens, int) or max_tokens > self.limits.max_tokens:
            raise HTTPException(422, f"max_tokens must be an integer <= "
                                     f"{self.limits.max_tokens}, got {max_tokens!r}")
        stop = body.get("stop") or ()
        try:
            return Sampling(temperature=float(body.get("temperature", 0.0)),
                            top_p=float(body.get("top_p", 1.0)), max_tokens=max_tokens,
                            stop=(stop,) if isinstance(stop, str) else tuple(stop),
                            seed=body.get("seed"))
        except (ValueError, TypeError, UserError) as exc:
            raise HTTPException(422, str(exc)) from None


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": {"message": exc.detail, "code": exc.status_code}},
                        status_code=exc.status_code)


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
    )(serve.ingress(api)(PromptService))
    return deployment.bind(str(Path(run_dir).resolve()), pool, limits or ServeLimits())
