"""Prompt rendering: Jinja in a sandbox, so dataset text is data and never code.

Field values are passed as variables; Jinja never re-renders a variable's content, so a
dataset field holding ``{{ ... }}`` or ``{% ... %}`` appears verbatim in the prompt. The
sandbox stops templates (user-supplied ones included) from reaching Python internals.

Templates are also bounded, so that a few bytes of template cannot take the machine's memory
or hours of CPU. Every value a template builds (an operator's result, ``~``, a list or dict
literal, a filter's or method's result, each ``{{ }}`` output) and the rendered text hold at
most ``_LARGEST`` characters or items (counted deeply, so ``[[s] * 1000] * 1000`` counts a
million ``s``); where an operation's size is known beforehand (``'x' * n``, ``center``,
``ljust``, ``%``/``format`` widths, ``replace``, ``join``, ``indent``, ``batch``, ``**`` on
integers...) it is refused before anything is built. Each render also has a work budget
(``_WORK`` units: a loop iteration, call, filter or operator costs ``_STEP``, built text a
unit per 16 characters, containers a unit per item), which bounds nested loops and
recursion. A hit is a one-line ``UserError`` naming the template and example.
"""

from __future__ import annotations

import inspect
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from functools import lru_cache, update_wrapper
from typing import Any

from promptsearch.pipelines.errors import UserError, one_line

_LARGEST = 1_000_000
"""Most characters or items in any value a template builds, and in the rendered text."""
_WORK = 5_000_000
"""Work units per render: at most a second or two of Python; prompts need a thousandth."""
_STEP = 10
"""Units per loop iteration, call, filter or operator."""
_INT_BITS = 100_000
"""Largest integer a template may compute (bits); squaring in a loop would otherwise hang."""


class TemplateLimit(Exception):
    """A template built too much or worked too long (reported as a ``UserError``)."""


class _Budget:
    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = _WORK


_BUDGET: ContextVar[_Budget | None] = ContextVar("promptsearch_template_budget", default=None)
"""The current render's budget (set by ``render_template``); sizes are checked without one."""


def _charge(units: int) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.left -= units
        if budget.left < 0:
            raise TemplateLimit(f"it does more than {_WORK // _STEP:,} steps of work, "
                                "e.g. loops inside loops")


def _measure(value: Any) -> tuple[int, int]:
    """(size, cost): characters of text plus items of containers, counted deeply and only up
    to just past ``_LARGEST``; cost is what measuring and building it is worth in units."""
    from jinja2.utils import Namespace

    if isinstance(value, str | bytes):
        return len(value), len(value) // 16
    if not isinstance(value, list | tuple | dict | set | frozenset | Namespace):
        return 1, 0
    size, chars, stack = 0, 0, [value]
    while stack and size <= _LARGEST:
        item = stack.pop()
        if isinstance(item, str | bytes):
            size += len(item)
            chars += len(item)
        elif isinstance(item, Namespace):
            stack.append(item._Namespace__attrs)
        elif isinstance(item, dict):
            size += len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            size += len(item)
            stack.extend(item)
        else:
            size += 1
    return size, size - chars + chars // 16


def _size(value: Any) -> int:
    return _measure(value)[0]


def _refuse_size(size: int, what: str) -> None:
    if size > _LARGEST:
        raise TemplateLimit(f"it builds {what} of more than {_LARGEST:,} characters or items")


def _checked(value: Any, what: str = "a value") -> Any:
    """``value`` if it is small enough, after charging for it."""
    if isinstance(value, Iterator):
        return value  # a generator: charged item by item where it is consumed
    size, cost = _measure(value)
    _refuse_size(size, what)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _INT_BITS:
        raise TemplateLimit(f"it builds a number of more than {_INT_BITS:,} bits")
    _charge(_STEP + cost)
    return value


# -- sizes known before building ------------------------------------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _check_widths(widths: Iterable[str], args: Iterable[Any], star: bool) -> None:
    """Widths and precisions in a format string, and any taken from the arguments."""
    if any(len(w) > 7 or int(w) > _LARGEST for w in widths):
        raise TemplateLimit(f"a format width above {_LARGEST:,}")
    if star and any(isinstance(a, int) and abs(a) > _LARGEST for a in args):
        raise TemplateLimit(f"a format width above {_LARGEST:,}")


def _check_percent(fmt: str, args: Any) -> None:
    specs = _PERCENT_SPEC.findall(fmt)
    widths = [w for spec in specs for w in spec if w and w != "*"]
    values = args.values() if isinstance(args, Mapping) else (
        args if isinstance(args, tuple) else (args,))
    _check_widths(widths, values, any("*" in spec for spec in specs))


def _check_format(fmt: str, args: Iterable[Any]) -> None:
    try:
        specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(fmt)]
    except ValueError:
        return  # str.format raises the same error itself
    widths = [w for spec in specs for w in _DIGITS.findall(spec)]
    _check_widths(widths, args, any("{" in spec for spec in specs))


def _replaced_size(text: str, old: str, new: str, count: int | None) -> int:
    found = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        found = min(found, count)
    return len(text) + found * max(0, len(new) - len(old))


def _joined_size(items: list[Any], separator: str) -> int:
    return sum(_size(x) for x in items) + len(separator) * max(0, len(items) - 1)


def _check_str_method(text: str, name: str, args: tuple, kwargs: dict) -> None:
    """``str`` methods whose result can be far larger than their inputs."""
    first = args[0] if args else next(iter(kwargs.values()), None)
    if name in ("center", "ljust", "rjust", "zfill") and isinstance(first, int):
        _refuse_size(first, f"{name}()")
    elif name == "expandtabs":
        tab = first if isinstance(first, int) else 8
        _refuse_size(len(text) + text.count("\t") * tab, "expandtabs()")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) \
            and isinstance(args[1], str):
        count = args[2] if len(args) > 2 else kwargs.get("count")
        _refuse_size(_replaced_size(text, args[0], args[1], count), "replace()")
    elif name == "translate" and isinstance(first, Mapping):
        widest = max((_size(v) for v in first.values() if isinstance(v, str)), default=1)
        _refuse_size(len(text) * max(1, widest), "translate()")


def _int_bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "**":
        if isinstance(left, int | float) and isinstance(right, int | float) \
                and abs(left) > 1 and (abs(right) > 64
                                       or _int_bits(left) * abs(right) > _INT_BITS):
            raise TemplateLimit(f"{left!r} ** {right!r} is too large to compute")
    elif operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            if _int_bits(left) + _int_bits(right) > _INT_BITS:
                raise TemplateLimit(f"it builds a number of more than {_INT_BITS:,} bits")
            return
        sequence, count = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(sequence, str | list | tuple) and isinstance(count, int):
            _refuse_size(_size(sequence) * count, "a repeated sequence")
    elif operator == "+":
        if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            _refuse_size(_size(left) + _size(right), "a sum")
    elif operator == "%" and isinstance(left, str):
        _check_percent(left, right)


# -- filters --------------------------------------------------------------------------------

def _check_filter(name: str, args: dict[str, Any]) -> None:
    """Filters whose result size is known from their arguments (Jinja's parameter names)."""
    if name == "center":
        _refuse_size(args["width"] if isinstance(args["width"], int) else 0, "center")
    elif name == "indent":
        width = args["width"]
        per_line = width if isinstance(width, int) else _size(width)
        text = str(args["s"])
        _refuse_size(len(text) + (text.count("\n") + 1) * per_line, "indent")
    elif name == "format":
        _check_percent(str(args["value"]), args["kwargs"] or args["args"])
    elif name == "replace":
        _refuse_size(_replaced_size(str(args["s"]), str(args["old"]), str(args["new"]),
                                    args["count"]), "replace")
    elif name == "join" and isinstance(args["value"], list | tuple):
        _refuse_size(_joined_size(list(args["value"]), str(args["d"])), "join")
    elif name in ("batch", "slice"):
        count = args["linecount" if name == "batch" else "slices"]
        _refuse_size(count if isinstance(count, int) else 0, name)
    elif name == "wordwrap":
        wrap = args["wrapstring"]
        _refuse_size(len(str(args["s"])) * (1 + (len(wrap) if isinstance(wrap, str) else 1)),
                     "wordwrap")
    elif name == "tojson" and isinstance(args["indent"], int) and args["indent"] > 16:
        raise TemplateLimit("tojson indent above 16")


_PRECHECKED = ("center", "indent", "format", "replace", "join", "batch", "slice", "wordwrap",
               "tojson")


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    inner = getattr(func, "__wrapped__", func)
    signature = inspect.signature(inner) if name in _PRECHECKED else None
    # Jinja's sync/async filter wrappers take an eval context their sync function does not.
    skip = int(hasattr(func, "jinja_pass_arg") and not hasattr(inner, "jinja_pass_arg"))

    def bounded(*args: Any, **kwargs: Any) -> Any:
        _charge(_STEP)
        if signature is not None:
            try:
                bound = signature.bind(*args[skip:], **kwargs)
            except TypeError:
                pass  # the filter itself says what is wrong with its arguments
            else:
                bound.apply_defaults()
                _check_filter(name, bound.arguments)
        return _checked(func(*args, **kwargs), f"the result of |{name}")

    return update_wrapper(bounded, func)  # keeps Jinja's pass_context & co markers


# -- the environment ------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class PromptEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"**", "*", "+", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _check_binop(operator, left, right)
            _charge(_STEP)
            return _checked(super().call_binop(context, operator, left, right),
                            f"the result of {operator}")

        def call(__self, __context: Any, __obj: Any, *args: Any,
                 **kwargs: Any) -> Any:
            _charge(_STEP)
            target = getattr(__obj, "__wrapped__", __obj)  # the sandbox's str.format wrapper
            owner = getattr(target, "__self__", None)
            name = getattr(target, "__name__", "")
            if isinstance(owner, str):
                if name in ("format", "format_map"):
                    values = [*args, *kwargs.values()]
                    if name == "format_map" and args and isinstance(args[0], Mapping):
                        values = list(args[0].values())
                    _check_format(owner, values)
                elif name == "join" and args:
                    items = list(args[0])
                    _charge(len(items))
                    _refuse_size(_joined_size(items, owner), "join()")
                    args = (items, *args[1:])
                else:
                    _check_str_method(owner, name, args, kwargs)
            result = super().call(__context, __obj, *args, **kwargs)
            return _checked(result, f"the result of {name or 'a call'}()")

        # Reached through EnvironmentAttribute nodes that _bound() puts into every template.

        def bounded_concat(self, *parts: Any) -> str:
            """``a ~ b ~ c``."""
            _refuse_size(sum(_size(p) for p in parts), "a ~ concatenation")
            return "".join(map(str, parts))

        def bounded_value(self, value: Any) -> Any:
            """A list, tuple or dict literal (``call`` checks its size)."""
            return value

        def bounded_iter(self, iterable: Any) -> Iterator[Any]:
            """A ``for`` loop's iterable: each iteration costs a step."""
            for item in iterable:
                _charge(_STEP)
                yield item

    env = PromptEnvironment(undefined=StrictUndefined, autoescape=False,
                            keep_trailing_newline=True, finalize=_finalize)
    env.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs: no use in a prompt
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    return env


def _finalize(value: Any) -> Any:
    """Every ``{{ }}`` output, before it becomes text."""
    return _checked(value, "an output")


def _bound(ast: Any) -> Any:
    """Route what Jinja would build or loop over directly through the environment's checks."""
    from jinja2 import nodes
    from jinja2.visitor import NodeTransformer

    def through(method: str, *args: Any, lineno: int) -> Any:
        return nodes.Call(nodes.EnvironmentAttribute(method), list(args), [], None, None,
                          lineno=lineno)

    class Bound(NodeTransformer):
        def visit_Concat(self, node: Any) -> Any:
            node = self.generic_visit(node)
            return through("bounded_concat", *node.nodes, lineno=node.lineno)

        def visit_List(self, node: Any) -> Any:
            return through("bounded_value", self.generic_visit(node), lineno=node.lineno)

        visit_Dict = visit_List

        def visit_Tuple(self, node: Any) -> Any:
            node = self.generic_visit(node)
            if node.ctx != "load":
                return node  # a target, as in {% for a, b in ... %}
            return through("bounded_value", node, lineno=node.lineno)

        def visit_For(self, node: Any) -> Any:
            node = self.generic_visit(node)
            node.iter = through("bounded_iter", node.iter, lineno=node.lineno)
            return node

    return Bound().visit(ast)


@lru_cache(maxsize=256)
def compile_template(source: str, *, name: str = "template") -> Any:
    """Parse a template once; a syntax error or a reach for Python internals names the
    template and the line. Internals are refused here, before anything renders, so the
    sandbox's run-time check is a second wall rather than the only one."""
    from jinja2 import TemplateSyntaxError

    env = _environment()
    try:
        ast = env.parse(source)
        _refuse_other_templates(ast, name)
        _refuse_internals(ast, name)
        ast = _bound(ast)
        ast.set_environment(env)
        return env.template_class.from_code(env, env.compile(ast), env.make_globals(None), None)
    except TemplateSyntaxError as exc:
        raise UserError(f"{name}: Jinja syntax error on line {exc.lineno}: {exc.message}; "
                        "fix the template") from None
    except RecursionError:
        raise UserError(f"{name}: the template is nested too deeply to parse; "
                        "simplify it") from None


# Besides dunders and private names: what Jinja's sandbox also blocks at run time.
_INTERNAL = frozenset({"mro", "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame",
                       "ag_code", "f_globals", "f_locals", "f_builtins", "tb_frame"})


_TAGS = {"Include": "include", "Import": "import", "FromImport": "from ... import",
         "Extends": "extends"}


def _refuse_other_templates(ast: Any, name: str) -> None:
    """A template stands alone: there is no template loader, so these could never work."""
    from jinja2 import nodes

    for node in ast.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        raise UserError(f"{name} line {node.lineno}: {{% {_TAGS[type(node).__name__]} %}} is "
                        "not supported; write the text into the template itself")


def _refuse_internals(ast: Any, name: str) -> None:
    """Reject ``x.__class__``, ``x['__globals__']``, ``x|attr('_y')`` and the like."""
    from jinja2 import nodes

    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            attr: Any = node.attr
        elif isinstance(node, nodes.Getitem):
            attr = node.arg.value if isinstance(node.arg, nodes.Const) else None
        else:
            attr = (node.args[0].value if node.name == "attr" and node.args
                    and isinstance(node.args[0], nodes.Const) else None)
        if isinstance(attr, str) and (attr.startswith("_") or attr in _INTERNAL):
            raise UserError(f"{name} line {node.lineno}: unsafe template (it reads {attr!r}, a "
                            "Python internal); templates may only use the fields and plain "
                            "Jinja expressions")


def render_template(source: str, fields: Mapping[str, Any], *, name: str = "template") -> str:
    """Render ``source`` with ``fields``; any failure of the template is a user error naming
    the template and, when the fields carry an ``id`` or ``key``, the example."""
    from jinja2 import TemplateError, UndefinedError
    from jinja2.exceptions import SecurityError

    template = compile_template(source, name=name)
    rid = fields.get("id", fields.get("key"))
    where = name if rid is None else f"{name} (example {rid})"
    token = _BUDGET.set(_Budget())
    try:
        pieces, length = [], 0
        for piece in template.generate(**fields):
            length += len(piece)
            if length > _LARGEST:
                raise TemplateLimit(f"the rendered text is longer than {_LARGEST:,} characters")
            pieces.append(piece)
        return "".join(pieces)
    except TemplateLimit as exc:
        raise UserError(f"{where}: unsafe template ({one_line(exc)}); simplify the template "
                        "or shorten its input") from None
    except MemoryError:
        raise UserError(f"{where}: the template ran out of memory; simplify it") from None
    except RecursionError:
        raise UserError(f"{where}: the template recurses too deeply (a macro or loop calling "
                        "itself?); simplify it") from None
    except UndefinedError as exc:
        known = ", ".join(sorted(fields)) or "(none)"
        raise UserError(f"{where}: {exc.message}; the fields available are: {known}") from None
    except SecurityError as exc:
        raise UserError(f"{where}: unsafe template ({one_line(exc)}); templates may only use "
                        "the fields and plain Jinja expressions") from None
    except (TemplateError, TypeError, ValueError, ArithmeticError) as exc:
        raise UserError(f"{where}: the template failed ({type(exc).__name__}: "
                        f"{one_line(exc)}); fix the template") from None
    finally:
        _BUDGET.reset(token)


def template_fields(source: str, *, name: str = "template") -> set[str]:
    """The top-level variables a template reads, to check them against a dataset up front."""
    from jinja2 import meta

    compile_template(source, name=name)
    return meta.find_undeclared_variables(_environment().parse(source))
