"""The HTTP request bodies of ``promptsearch serve``: read within bounds, then one pydantic
model per endpoint.

A body is read in chunks and refused as soon as it passes the size limit (a chunked upload
has no Content-Length to check first), parsed without NaN or Infinity, measured for nesting
without recursion, and validated by a model that refuses unknown fields, wrong types and
non-finite numbers. Every refusal is an ``HTTPException`` whose message names the field.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

__all__ = ["ChatMessage", "ChatRequest", "input_models", "read_json", "validate"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ChatMessage(_Body):
    """One message of ``POST /v1/chat/completions`` (OpenAI's shape)."""

    role: Literal["system", "user", "assistant"] = Field(
        description="Who speaks: system, user or assistant.")
    content: str = Field(description="The message text.")
    name: str | None = Field(None, description="Optional name of the speaker (ignored).")


class ChatRequest(_Body):
    """``POST /v1/chat/completions``: the OpenAI fields promptsearch honours; any other field
    is refused rather than silently ignored."""

    model: str | None = Field(None, description="Accepted for OpenAI clients; the server "
                                                "answers with its one model whatever it says.")
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate, >= 1 and "
                                   "<= the server's --max-tokens [default: 64 or that limit].")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name "
                                              "for max_tokens; max_tokens wins if both are set.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature, >= 0 and "
                               "finite; 0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass, in (0, 1].")
    stop: str | list[str] | None = Field(None, description="A stop string or a list of them.")
    seed: int | None = Field(None, description="Sampling seed, for reproducible sampling.")
    n: Literal[1] = Field(1, description="Choices to return; only 1 is supported.")
    stream: Literal[False] = Field(False, description="Streaming is not supported.")
    user: str | None = Field(None, description="OpenAI's end-user id (ignored).")


def input_models(input_fields: tuple[str, ...], task: str) -> tuple[type[BaseModel],
                                                                       type[BaseModel]]:
    """The models of ``POST /v1/<task>``: one input (the task's fields and an optional
    ``id``), and a batch ``{"inputs": [...]}``."""
    fields: dict[str, Any] = {
        name: (str, Field(description=f"The {task} task's input field {name!r}."))
        for name in input_fields}
    single = create_model(
        f"{task.capitalize()}Input", __base__=_Body,
        id=(str | int | None, Field(None, description="Returned with the answer.")), **fields)
    batch = create_model(
        f"{task.capitalize()}Batch", __base__=_Body,
        inputs=(list[single], Field(min_length=1,  # type: ignore[valid-type]
                                    description="Inputs answered together, in order.")))
    return single, batch


async def read_json(request: Request, *, max_bytes: int, max_depth: int,
                    timeout_s: float) -> Any:
    """The request's JSON body: at most ``max_bytes`` (read incrementally, so a chunked body
    is cut at the limit), arriving within ``timeout_s``, nested at most ``max_depth`` deep."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, f"invalid Content-Length {declared[:40]!r}")
        if int(declared) > max_bytes:
            raise HTTPException(413, f"body larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0

    async def receive() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise HTTPException(413, f"body larger than {max_bytes} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive(), timeout_s)
    except TimeoutError:
        raise HTTPException(408, f"the body did not arrive within {timeout_s:g} s") from None
    try:
        body = json.loads(b"".join(chunks).decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise HTTPException(400, "body is not valid UTF-8") from None
    except RecursionError:
        raise HTTPException(400, f"JSON nested deeper than {max_depth}") from None
    except ValueError as exc:  # JSONDecodeError, and NaN / Infinity
        raise HTTPException(400, f"body is not valid JSON: {exc}") from None
    if _deeper_than(body, max_depth):
        raise HTTPException(400, f"JSON nested deeper than {max_depth}")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels; iterative, so any depth
    ``json.loads`` accepts is measured without a RecursionError."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item \
            if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


_REASONS = {"string_type": "must be a string", "int_type": "must be an integer",
            "float_type": "must be a number", "finite_number": "must be a finite number",
            "list_type": "must be a list", "model_type": "must be an object",
            "dict_type": "must be an object", "literal_error": "is not supported"}


def validate(model: type[BaseModel], data: Any, *, where: str = "body") -> Any:
    """``data`` as ``model``, or a 422 naming the first field at fault."""
    if not isinstance(data, dict):
        raise HTTPException(422, f"{where}: expected a JSON object with "
                                 f"{', '.join(model.model_fields)}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                       for part in error["loc"]).lstrip(".")
        if error["type"] == "missing":
            message = f"missing field {path!r}"
        elif error["type"] == "extra_forbidden":
            message = f"unknown field {path!r}"
        else:
            reason = _REASONS.get(error["type"], error["msg"])
            message = f"field {path!r} {reason}" if error["type"] in _REASONS \
                else f"field {path!r}: {reason}"
        raise HTTPException(422, f"{where}: {message}") from None
