"""Templates cannot build gigabytes or loop for hours (issue 12 §5): each attack below is a
one-line UserError naming the template and example, within seconds. No engine."""

from __future__ import annotations

import time

import pytest

from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.prompting.render import render_template

FIELDS = {"id": "q-7", "question": "質問"}
NS_LOOP = "{% set ns = namespace(v=START) %}{% for i in range(70) %}{% set ns.v = STEP %}" \
          "{% endfor %}{{ ns.v is defined }}"


def _loop(start: str, step: str) -> str:
    return NS_LOOP.replace("START", start).replace("STEP", step)


ATTACKS = {
    "percent-width": "{{ '%999999999s' % 'x' }}",
    "percent-star": "{{ '%*s' % (999999999, 'x') }}",
    "percent-precision": "{{ '%.999999999f' % 1.5 }}",
    "format-width": "{{ '{:>999999999}'.format('x') }}",
    "format-nested-width": "{{ '{:>{w}}'.format('x', w=999999999) }}",
    "format-map": "{{ '{x:>999999999}'.format_map({'x': 1}) }}",
    "format-filter": "{{ '%999999999s'|format('x') }}",
    "center-method": "{{ 'x'.center(999999999) }}",
    "ljust": "{{ 'x'.ljust(999999999) }}",
    "rjust": "{{ 'x'.rjust(999999999) }}",
    "zfill": "{{ '1'.zfill(999999999) }}",
    "center-filter": "{{ 'x'|center(999999999) }}",
    "replace-method": "{{ ('a' * 1000).replace('a', 'b' * 100000) }}",
    "replace-empty": "{{ 'abc'.replace('', 'x' * 900000) }}",
    "replace-filter": "{{ ('a' * 1000)|replace('a', 'b' * 100000) }}",
    "expandtabs": "{{ ('\t' * 1000).expandtabs(100000) }}",
    "translate": "{{ ('a' * 1000).translate({97: 'b' * 10000}) }}",
    "join-filter": "{{ range(100000)|join('x' * 100) }}",
    "join-method": "{{ ('x' * 100).join(range(100000)|map('string')) }}",
    "indent": "{{ ('\n' * 900000)|indent(1000, true, true) }}",
    "batch-fill": "{{ ['x']|batch(999999999, 'y')|list|length }}",
    "slice": "{{ ['x']|slice(999999999, 'y')|list|length }}",
    "wordwrap": "{{ ('x ' * 1000)|wordwrap(1, wrapstring='y' * 10000) }}",
    "tojson-indent": "{{ {'a': [1, 2]}|tojson(indent=100000000) }}",
    "tilde-doubling": _loop("'x'", "ns.v ~ ns.v"),
    "plus-doubling": _loop("'x'", "ns.v + ns.v"),
    "list-plus-doubling": _loop("[1]", "ns.v + ns.v"),
    "list-literal-dag": _loop("[1]", "[ns.v, ns.v]"),
    "dict-literal-dag": _loop("{}", "{'a': ns.v, 'b': ns.v}"),
    "list-repetition": "{{ [[question * 1000] * 1000] * 1000 }}",
    "int-squaring": _loop("3", "ns.v * ns.v"),
    "int-power-chain": _loop("3", "ns.v ** 64"),
    "nested-ranges": "{% for i in range(100000) %}{% for j in range(100000) %}"
                     "{% endfor %}{% endfor %}",
    "nested-string-loops": "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}"
                           "{% endfor %}{% endfor %}",
    "doubling-macro": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}"
                      "{% endmacro %}{{ f(60) }}",
    "endless-macro": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "recursive-loop": "{% for x in [1, 2] recursive %}{{ loop([1, 2]) }}{% endfor %}",
    "output-length": "{% for i in range(2000) %}{{ 'x' * 1000 }}{% endfor %}",
    "set-block-doubling": "{% set ns = namespace(v='x') %}{% for i in range(70) %}"
                          "{% set b %}{{ ns.v }}{{ ns.v }}{% endset %}{% set ns.v = b %}"
                          "{% endfor %}",
    "lipsum": "{{ lipsum(100000, max=100000) }}",
    "string-of-dag": "{% set a = [question] * 1000 %}{% set b = [a] * 1000 %}{{ b|string }}",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("source", list(ATTACKS.values()), ids=list(ATTACKS))
def test_a_template_building_or_looping_too_much_is_one_line_error(source: str) -> None:
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        render_template(source, FIELDS, name="template mine@v1")
    message = str(info.value)
    assert message.startswith("template mine@v1 (example q-7): "), message
    assert "\n" not in message
    assert time.monotonic() - start < 15


def test_the_bound_is_named_in_the_message() -> None:
    with pytest.raises(UserError, match=r"unsafe template \(it builds .* more than 1,000,000 "
                                        r"characters or items\); simplify the template"):
        render_template("{{ 'x'.center(999999999) }}", FIELDS, name="template mine@v1")
    with pytest.raises(UserError, match=r"unsafe template \(it does more than [\d,]+ steps of work, e\.g\. loops inside loops\)"):
        render_template(ATTACKS["nested-ranges"], FIELDS, name="template mine@v1")
    with pytest.raises(UserError, match=r"rendered text is longer than 1,000,000 characters"):
        render_template(ATTACKS["output-length"], FIELDS, name="template mine@v1")


def test_memory_error_while_rendering_is_a_user_error() -> None:
    class Huge:
        def __str__(self) -> str:
            raise MemoryError

    with pytest.raises(UserError, match=r"^t \(example 1\): the template ran out of memory"):
        render_template("{{ x }}", {"id": 1, "x": Huge()}, name="t")


def test_ordinary_templates_still_render() -> None:
    shots = [{"q": f"問{i}", "a": f"答{i}"} for i in range(32)]
    source = ("{% macro shot(s) %}質問: {{ s.q }}\n回答: {{ s.a }}\n{% endmacro %}"
              "{% for s in shots %}{{ shot(s) }}{% endfor %}"
              "{{ '%s/%d' % ('x', 3) }} {{ '{:>4}'.format(7) }} {{ 'ab'.center(6, '*') }} "
              "{{ [1, 2, 3]|join(',') }} {{ ('a' ~ 'b')|replace('b', 'c') }} "
              "{{ (['x'] * 3)|length }} {{ {'k': 1}|tojson }} {{ 2 ** 10 }} "
              "{{ ('\n' ~ context)|indent(2) }}")
    text = render_template(source, {"shots": shots, "context": "本文" * 200_000})
    assert text.startswith("質問: 問0\n回答: 答0\n")
    assert "x/3    7 **ab** 1,2,3 ac 3 {\"k\": 1} 1024 \n  本文本文" in text
    assert len(text) > 400_000


def test_a_long_field_renders_and_is_budgeted_per_render() -> None:
    """The work budget is per render: many renders of one template never add up."""
    for _ in range(50):
        assert len(render_template("{{ doc }}", {"doc": "あ" * 900_000})) == 900_000
