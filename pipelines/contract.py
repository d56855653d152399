"""Typed contracts for the files a user writes or a run leaves: one pydantic model per format.

A model refuses unknown keys, wrong types (YAML's ``"false"`` is not a boolean, ``"2"`` is
not an integer) and out-of-range or non-finite values; its attribute docstrings are the field
descriptions that ``docs/formats.md`` is generated from. A refusal becomes one ``UserError``
line naming the file and the field, in the project's ``file: field ... got value`` form.
"""

from __future__ import annotations

import contextvars
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from promptsearch.pipelines.errors import UserError

__all__ = ["Contract", "check_known", "describe_error", "load_contract", "unknown_name",
           "validate_contract"]

ModelT = TypeVar("ModelT", bound="Contract")
_NESTING: contextvars.ContextVar[int] = contextvars.ContextVar("contract_nesting", default=0)


class Contract(BaseModel):
    """Base of every file format: strict about keys, finite numbers, immutable once read.

    Constructing one in code (``Sampling(top_p=1.5)``) raises a ``UserError`` too, so the
    command-line options that build these objects get the same one-line messages.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              use_attribute_docstrings=True, validate_default=False)

    def __init__(self, **data: Any) -> None:
        # pydantic calls an overridden __init__ for nested models and from model_validate
        # too: only the outermost call turns the error into a UserError, so that the path
        # of a nested field (``sampling.top_p``) reaches the message.
        outermost = _NESTING.get() == 0
        token = _NESTING.set(_NESTING.get() + 1)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            if not outermost:
                raise
            raise UserError(describe_error(exc, model=type(self))) from None
        finally:
            _NESTING.reset(token)


def unknown_name(value: Any, known: Iterable[str]) -> PydanticCustomError:
    """The error for a name not in a registry (``unknown fewshot.selector 'x'; known: ...``)."""
    return PydanticCustomError("unknown_name", "known: {known}",
                               {"known": ", ".join(known), "value": value})


def check_known(values: Iterable[Any], known: Collection[str]) -> None:
    """Inside a validator: every value must be a name of the registry ``known``."""
    for value in values:
        if value not in known:
            raise unknown_name(value, known)


def validate_contract(model: type[ModelT], data: Any, *, where: str) -> ModelT:
    """``data`` (parsed YAML or JSON) as ``model``, or one ``UserError`` line about ``where``."""
    if not isinstance(data, Mapping):
        fields = ", ".join(name for name, f in model.model_fields.items() if f.is_required())
        raise UserError(f"{where}: expected a mapping" + (f" with {fields}" if fields else "")
                        + f", got {_short(data)}")
    token = _NESTING.set(_NESTING.get() + 1)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserError(describe_error(exc, model=model, where=where)) from None
    finally:
        _NESTING.reset(token)


def load_contract(model: type[ModelT], path: str | Path) -> ModelT:
    """Read a YAML file (aliases bounded, syntax errors located) and validate it."""
    from promptsearch.pipelines.data.readers import read_yaml

    return validate_contract(model, read_yaml(path), where=str(path))


_REASONS = {
    "int_type": "must be an integer", "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a finite number", "float_parsing": "must be a finite number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false (unquoted)", "bool_parsing": "must be true or false",
    "string_type": "must be a string", "string_too_short": "must not be empty",
    "list_type": "must be a list", "tuple_type": "must be a list", "set_type": "must be a list",
    "dict_type": "must be a mapping", "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping", "dataclass_type": "must be a mapping",
    "none_required": "must be null", "too_short": "needs at least one value",
}


def describe_error(exc: ValidationError, *, model: type[BaseModel] | None = None,
                   where: str = "") -> str:
    """The first problem of ``exc`` as one line: ``where: field reason, got value``."""
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    prefix = f"{where}: " if where else ""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        parent = _dotted(loc[:-1])
        allowed = _allowed(model, loc[:-1])
        return (f"{prefix}unknown field {loc[-1]!r}" + (f" in {parent}" if parent else "")
                + (f"; allowed: {', '.join(allowed)}" if allowed else ""))
    name = _dotted(loc) or "value"
    if kind == "missing":
        return f"{prefix}field {name!r} is required"
    if kind == "unknown_name":
        named = _dotted(tuple(p for p in loc if not isinstance(p, int)))
        return f"{prefix}unknown {named} {ctx.get('value', error['input'])!r}; " \
               f"known: {ctx['known']}"
    if kind == "value_error":
        reason = str(ctx.get("error", error["msg"]))
        if not loc:  # a rule over several fields
            return f"{prefix}{reason}"
    elif kind == "literal_error":
        reason = f"must be {ctx.get('expected', 'one of the allowed values')}"
    elif kind in _REASONS:
        reason = _REASONS[kind]
    elif kind in _BOUNDS:
        reason = f"must be {_BOUNDS[kind]} {next(iter(ctx.values()))}"
    else:
        reason = error["msg"][:1].lower() + error["msg"][1:]
    return f"{prefix}{name} {reason}, got {_short(error['input'])}"


_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
           "less_than": "<"}


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("function-after", "function-before", "function-wrap", "list", "tuple"):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _allowed(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (sub-)model at ``loc``, for an unknown-key message."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            current = _item_type(current)
            continue
        sub = _model_in(current)
        if sub is None or part not in sub.model_fields:
            current = _item_type(current)  # dict[str, Model]: part is a key
            if _model_in(current) is None:
                return []
            continue
        current = sub.model_fields[part].annotation
    found = _model_in(current)
    return sorted(found.model_fields) if found is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _item_type(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis and a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in args:
            item = _item_type(arg)
            if item is not None:
                return item
        return None
    return args[-1] if args else None
