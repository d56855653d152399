"""Prompt rendering: Jinja in a sandbox, so dataset text is data and never code.

Field values are passed as variables; Jinja never re-renders a variable's content, so a
dataset field holding ``{{ ... }}`` or ``{% ... %}`` appears verbatim in the prompt. The
sandbox stops templates (user-supplied ones included) from reaching Python internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from promptsearch.pipelines.errors import UserError, one_line

_LARGEST = 1_000_000
"""Most items a template may build by repeating a sequence; beyond, rendering could hang."""


@lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class PromptEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"**", "*"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "**" and _big_power(left, right):
                raise SecurityError(f"{left!r} ** {right!r} is too large to compute")
            if operator == "*" and _big_repeat(left, right):
                raise SecurityError(f"a sequence repeated to more than {_LARGEST} items")
            return super().call_binop(context, operator, left, right)

    return PromptEnvironment(undefined=StrictUndefined, autoescape=False,
                             keep_trailing_newline=True)


def _big_power(base: Any, exponent: Any) -> bool:
    if not (isinstance(base, int | float) and isinstance(exponent, int | float)):
        return False
    return abs(exponent) > 64 and abs(base) > 1


def _big_repeat(left: Any, right: Any) -> bool:
    sequence, count = (left, right) if isinstance(right, int) else (right, left)
    return (isinstance(sequence, str | list | tuple) and isinstance(count, int)
            and len(sequence) * count > _LARGEST)


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
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise UserError(f"{name}: Jinja syntax error on line {exc.lineno}: {exc.message}; "
                        "fix the template") from None


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
    try:
        return template.render(**fields)
    except UndefinedError as exc:
        known = ", ".join(sorted(fields)) or "(none)"
        raise UserError(f"{where}: {exc.message}; the fields available are: {known}") from None
    except SecurityError as exc:
        raise UserError(f"{where}: unsafe template ({one_line(exc)}); templates may only use "
                        "the fields and plain Jinja expressions") from None
    except (TemplateError, TypeError, ValueError, ArithmeticError) as exc:
        raise UserError(f"{where}: the template failed ({type(exc).__name__}: "
                        f"{one_line(exc)}); fix the template") from None


def template_fields(source: str, *, name: str = "template") -> set[str]:
    """The top-level variables a template reads, to check them against a dataset up front."""
    from jinja2 import meta

    compile_template(source, name=name)
    return meta.find_undeclared_variables(_environment().parse(source))
