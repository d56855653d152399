"""A judge behind any OpenAI-compatible server (``POST {url}/chat/completions``).

Calls run concurrently up to a bound (asyncio + a semaphore, httpx); a refused connection,
a timeout, 429 or a 5xx is retried with exponential backoff; other 4xx answers stop at once
(a wrong model name or key does not get better by asking again). Replies go through the
generation cache, keyed by the URL, the model name, the messages and the decoding settings:
a re-run or a resume sends no request twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from promptsearch.pipelines.judge.base import Judge, JudgeError, JudgeReply
from promptsearch.pipelines.judge.prompts import JudgePrompt

API_KEY_ENV = "PROMPTSEARCH_JUDGE_API_KEY"
MAX_TOKENS = 64


class ChatMessage(BaseModel):
    """One message of the conversation sent to the judge."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"] = Field(description="Who speaks.")
    content: str = Field(description="What is said.")


class ChatRequest(BaseModel):
    """The body promptsearch sends to ``/chat/completions`` (OpenAI's field names)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="The judge model's name on the server (--judge-model).")
    messages: list[ChatMessage] = Field(description="System rubric, question, reply turns.")
    temperature: float = Field(0.0, description="Always 0: a judge must be repeatable.")
    max_tokens: int = Field(MAX_TOKENS, description="The answer line and a short reason.")
    seed: int = Field(0, description="For servers that sample even at temperature 0.")


class _ReplyMessage(BaseModel):
    # Servers add their own fields (refusal, tool_calls, reasoning...): read what we need,
    # ignore the rest, or every new server version would break the judge.
    model_config = ConfigDict(extra="ignore")
    content: str | None = Field(None, description="The judge's text.")


class _Choice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    message: _ReplyMessage = Field(description="The reply.")


class _Usage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt_tokens: int = Field(0, description="Tokens read.")
    completion_tokens: int = Field(0, description="Tokens written.")


class ChatResponse(BaseModel):
    """The part of an OpenAI chat completion the judge reads (other fields are ignored)."""

    model_config = ConfigDict(extra="ignore")
    choices: list[_Choice] = Field(min_length=1, description="The first one is the reply.")
    usage: _Usage = Field(default_factory=_Usage, description="Token counts, when given.")


class HttpJudge(Judge):
    """``--judge-url URL --judge-model NAME``; the key comes from ``$PROMPTSEARCH_JUDGE_API_KEY``
    (read when a request is made, never written to the run directory)."""

    kind = "http"

    def __init__(self, url: str, model: str, *, concurrency: int = 8, timeout_s: float = 60.0,
                 attempts: int = 3, backoff_s: float = 0.5,
                 cache: str | Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.endpoint = (self.url if self.url.endswith("/chat/completions")
                         else f"{self.url}/chat/completions")
        self.model = model
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.cache_dir = str(cache) if cache else None
        self._cache: Any = None
        self.requests_sent = 0
        """HTTP requests made by this object (retries included); what the tests watch."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None  # an SQLite connection; reopened where the judge runs
        return state

    @property
    def name(self) -> str:
        return f"{self.model} at {self.url}"

    def _store(self) -> Any:
        if self._cache is None and self.cache_dir:
            from promptsearch.pipelines.engine.cache import GenerationCache

            self._cache = GenerationCache(self.cache_dir)
        return self._cache

    def _key(self, body: ChatRequest) -> str:
        payload = json.dumps({"judge_url": self.url, "body": body.model_dump()},
                             sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    async def complete(self, prompts: Sequence[JudgePrompt]) -> list[JudgeReply]:
        import httpx

        bodies = [ChatRequest(model=self.model, messages=[ChatMessage(**m)
                                                          for m in p.as_messages()])
                  for p in prompts]
        keys = [self._key(b) for b in bodies]
        store = self._store()
        records = store.get_many(keys) if store is not None else [None] * len(keys)
        replies: list[JudgeReply | None] = [
            None if r is None else JudgeReply(r["text"], r["prompt_tokens"], r["output_tokens"],
                                              cached=True) for r in records]
        todo = [i for i, r in enumerate(replies) if r is None]
        if todo:
            limit = asyncio.Semaphore(self.concurrency)
            headers = {"Authorization": f"Bearer {os.environ.get(API_KEY_ENV, 'none')}"}
            async with httpx.AsyncClient(timeout=self.timeout_s, headers=headers) as client:

                async def one(i: int) -> None:
                    async with limit:
                        replies[i] = await self._post(client, bodies[i])

                tasks = [asyncio.ensure_future(one(i)) for i in todo]
                try:
                    await asyncio.gather(*tasks)
                except BaseException:
                    for task in tasks:
                        task.cancel()
                    raise
            if store is not None:
                store.put_many([(keys[i], {"text": r.text, "prompt_tokens": r.prompt_tokens,
                                           "output_tokens": r.output_tokens,
                                           "finish_reason": "stop"})
                                for i in todo if (r := replies[i]) is not None])
        return [r for r in replies if r is not None]

    async def _post(self, client: Any, body: ChatRequest) -> JudgeReply:
        import httpx

        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.requests_sent += 1
            try:
                response = await client.post(self.endpoint, json=body.model_dump())
            except httpx.ConnectError as exc:
                problem = ("connection refused" if _refused(exc)
                           else f"cannot connect ({exc})")
                continue
            except httpx.TimeoutException:
                problem = f"no answer within {self.timeout_s:g} s"
                continue
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                problem = f"HTTP {response.status_code}: {_server_message(response)}"
                continue
            if response.status_code >= 400:
                raise JudgeError(f"--judge-url {self.url}: the server refused the request "
                                 f"(HTTP {response.status_code}: {_server_message(response)}); "
                                 f"check --judge-model {self.model!r} and ${API_KEY_ENV}")
            try:
                parsed = ChatResponse.model_validate_json(response.content)
            except ValueError:
                raise JudgeError(f"--judge-url {self.url}: the answer is not an OpenAI chat "
                                 f"completion ({response.text[:120]!r}); point it at the "
                                 "server's /v1 base URL") from None
            return JudgeReply(parsed.choices[0].message.content or "",
                              parsed.usage.prompt_tokens, parsed.usage.completion_tokens)
        raise JudgeError(f"--judge-url {self.url}: {problem} after {self.attempts} attempts; "
                         "is the judge server running, and is the URL right?")


def _refused(exc: BaseException) -> bool:
    """Somewhere in the chain of causes, the server's port refused the connection."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "refused" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _server_message(response: Any) -> str:
    try:
        data = response.json()
        error = data.get("error") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
    except ValueError:
        message = None
    return " ".join(str(message or response.text or response.reason_phrase).split())[:200]
