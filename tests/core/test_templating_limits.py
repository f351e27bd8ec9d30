"""Templates are bounded (issue 16, item 4), tried as an attacker would: integers, sizes,
loops, output and time are limited, a template stops at its step's deadline, and data is
never rendered as a template, at any depth."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flowyard.errors import TemplateError
from flowyard.stack import Stack
from flowyard.templating import (
    MAX_INT_BITS,
    MAX_ITERATIONS,
    MAX_OUTPUT_CHARS,
    MAX_RESULT,
    evaluate,
    render_value,
)
from hypothesis import given, settings
from hypothesis import strategies as st

CTX: dict[str, Any] = {"inputs": {"n": [1, 2, 3], "text": "{{ 7*7 }}"}, "steps": {}}

TOWER = "{{ ((((9**64)**64)**64)**64)**64 }}"
EXPONENTIAL_MACRO = ("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}"
                     "{% endmacro %}{{ f(60) }}")

REFUSED = {
    "exponent tower": TOWER,
    "big exponent": "{{ 2 ** 100000 }}",
    "squaring": "{% set a = 2**4000 %}{{ a * a * a }}",
    "string repetition": "{{ 'x' * 100000000 }}",
    "list repetition": "{{ [1, 2] * 6000000 }}",
    "nested repetition": "{% set s = 'x' * 9000000 %}{{ [s] * 10 }}",
    "list literal of big parts": "{% set s = 'x' * 9000000 %}{% set t = [s, s] %}",
    "dict literal of big parts": "{% set s = 'x' * 9000000 %}{% set t = {'a': s, 'b': s} %}",
    "concatenation doubling": "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
                              "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "top-level doubling": "{% set a = 'x' * 6000000 %}{% set b = a ~ a %}{% set c = b ~ b %}",
    "sum doubling": "{% set a = 'x' * 6000000 %}{{ a + a }}",
    "format width": "{{ '%0999999999d' % 1 }}",
    "format filter width": "{{ '%999999999s' | format('a') }}",
    "center filter": "{{ 'x' | center(1000000000) }}",
    "ljust method": "{{ 'a'.ljust(10 ** 9) }}",
    "replace blow-up": "{{ ('x' * 1000) | replace('x', 'y' * 1000000) }}",
    "join blow-up": "{% set s = 'x' * 5000000 %}{{ (s, s, s) | join('') }}",
    "nested loops": "{% for a in range(100000) %}{% for b in range(100000) %}"
                    "{% endfor %}{% endfor %}",
    "loop over data": "{% for a in inputs.n * 300000 %}{% for b in inputs.n %}{% endfor %}"
                      "{% endfor %}",
    "exponential macro": EXPONENTIAL_MACRO,
}


@pytest.mark.parametrize("template", REFUSED.values(), ids=REFUSED.keys())
def test_hostile_templates_are_refused_quickly(template: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateError, match=r"^step 'x', field with\.value: ") as info:
        render_value(template, CTX, where="step 'x', field with.value", timeout=3)
    assert time.monotonic() - started < 5
    assert "Traceback" not in str(info.value)


def test_limits_are_named_in_the_errors() -> None:
    with pytest.raises(TemplateError, match=f"more than {MAX_INT_BITS} bits"):
        render_value(TOWER, CTX)
    with pytest.raises(TemplateError, match=f"more than {MAX_RESULT} characters"):
        render_value("{{ 'x' * 100000000 }}", CTX)
    with pytest.raises(TemplateError, match=f"more than {MAX_ITERATIONS} loop iterations"):
        render_value(REFUSED["nested loops"], CTX)


def test_output_size_is_limited() -> None:
    chunk = "{% set s = 'x' * 900000 %}{% for i in range(20) %}{{ s }}{% endfor %}"
    assert 20 * 900_000 > MAX_OUTPUT_CHARS >= 900_000
    with pytest.raises(TemplateError, match=f"output is longer than {MAX_OUTPUT_CHARS}"):
        render_value(chunk, CTX)
    literal = ("{% for i in range(1000) %}{% for j in range(200) %}" + "y" * 60
               + "{% endfor %}{% endfor %}")
    with pytest.raises(TemplateError, match="output is longer"):
        render_value(literal, CTX)
    # literal text collected inside a macro counts too, before it is joined in memory
    in_macro = ("{% macro m() %}{% for i in range(90000) %}{% for j in range(9) %}"
                + "y" * 90000 + "{% endfor %}{% endfor %}{% endmacro %}{{ m() | length }}")
    with pytest.raises(TemplateError, match="output is longer"):
        render_value(in_macro, CTX)
    printed_lists = ("{% set l = [1] * 900000 %}{% macro m() %}{% for i in range(50) %}{{ l }}"
                     "{% endfor %}{% endmacro %}{{ m() | length }}")
    with pytest.raises(TemplateError, match="output is longer"):
        render_value(printed_lists, CTX)


def test_the_time_limit_stops_a_render() -> None:
    started = time.monotonic()
    with pytest.raises(TemplateError, match=r"time limit of 0\.5 s"):
        render_value(EXPONENTIAL_MACRO, CTX, where="w", timeout=0.5)
    assert time.monotonic() - started < 2
    with pytest.raises(TemplateError, match="time limit"):
        evaluate(EXPONENTIAL_MACRO, CTX, timeout=0.2)


def test_ordinary_templates_still_work() -> None:
    assert render_value("{{ 2 ** 100 }}", CTX) == 2 ** 100
    assert render_value("{{ 'ab' * 3 }}-{{ [1] * 2 }}", CTX) == "ababab-[1, 1]"
    assert render_value("{% for i in range(1000) %}{{ i % 10 }}{% endfor %}", CTX)[:5] == "01234"
    assert render_value("{{ inputs.n | join(',') }} {{ '%03d' % 7 }} {{ 'a' ~ 'b' }}",
                        CTX) == "1,2,3 007 ab"
    assert render_value("{% set ns = namespace(t=0) %}{% for v in inputs.n %}"
                        "{% set ns.t = ns.t + v %}{% endfor %}{{ ns.t }}", CTX) == "6"
    assert render_value("{{ inputs.n + [4] }}", CTX) == [1, 2, 3, 4]


def test_large_data_passes_through() -> None:
    big = "d" * 3_000_000
    ctx = {"inputs": {"doc": big, "rows": list(range(200_000))}, "steps": {}}
    assert render_value("Summary: {{ inputs.doc }}", ctx) == "Summary: " + big
    assert render_value("{{ 'S: ' ~ inputs.doc | truncate(10) }}", ctx) == "S: ddddddd..."
    assert render_value("{{ [inputs.doc, inputs.doc] | length }}", ctx) == 2
    assert render_value("{{ inputs.rows | sum }}", ctx) == sum(range(200_000))


def test_data_is_never_rendered_again() -> None:
    nested = {"a": ["{{ 7*7 }}", {"b": "${x.y}", "c": "{% for i in range(9) %}z{% endfor %}"}]}
    ctx = {"inputs": {"text": "{{ 7*7 }}", "nested": nested}, "steps": {
        "s": {"output": "{{ 6*6 }}", "status": "completed"}}}
    assert render_value("${inputs.text}", ctx) == "{{ 7*7 }}"
    assert render_value("[{{ inputs.text }}] ${s}", ctx) == "[{{ 7*7 }}] {{ 6*6 }}"
    assert render_value({"k": ["{{ inputs.nested }}"]}, ctx) == {"k": [nested]}
    assert render_value("{{ inputs.nested | tojson }}", ctx).count("{{ 7*7 }}") == 1


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=80))
def test_arbitrary_strings_as_data_come_out_verbatim(value: str) -> None:
    ctx = {"inputs": {"v": value}, "steps": {"s": {"output": [value], "status": "completed"}}}
    assert render_value("<{{ inputs.v }}>", ctx) == f"<{value}>"
    assert render_value("<${inputs.v}|${s[0]}>", ctx) == f"<{value}|{value}>"
    assert render_value("{{ inputs.v }}", ctx) == value


@pytest.mark.anyio
async def test_exponent_tower_in_a_workflow_fails_within_the_step_timeout() -> None:
    # a template the integer limit does not catch (an exponential macro) is stopped by the
    # step's timeout, inside a run with a timeout of its own
    wf = {"name": "tower", "timeout": 3, "on_failure": "continue", "steps": [
        {"id": "tower", "uses": "echo", "timeout": 2, "with": {"value": TOWER}},
        {"id": "slow", "uses": "echo", "timeout": 2, "with": {"value": EXPONENTIAL_MACRO}},
        {"id": "data", "uses": "echo", "with": {"value": "{{ inputs.text }}"}},
    ], "inputs": {"text": {"type": "string"}}, "outputs": {"data": "${data}"}}
    started = time.monotonic()
    async with Stack() as stack:
        result = await stack.run(wf, {"text": "{{ 7*7 }}"})
    elapsed = time.monotonic() - started
    assert elapsed < 5
    assert result.steps["tower"].status == "failed"
    assert "step 'tower', field with" in result.steps["tower"].error
    assert "bits" in result.steps["tower"].error
    assert result.steps["slow"].status == "failed"
    assert "step 'slow', field with" in result.steps["slow"].error
    # whichever bound trips first on this machine (the step's 2 s or the work limit), the
    # exponential macro is refused within the step's timeout
    error = result.steps["slow"].error
    assert "time limit of 2 s" in error or "1000000 loop iterations, calls and operators" in error
    assert result.outputs == {"data": "{{ 7*7 }}"}


@settings(max_examples=150, deadline=None)
@given(base=st.integers(min_value=-(10**30), max_value=10**30),
       exponents=st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=4),
       count=st.integers(min_value=0, max_value=10**9))
def test_arithmetic_is_exact_or_refused_quickly(base: int, exponents: list[int],
                                                count: int) -> None:
    expr = str(base)
    for exponent in exponents:
        expr = f"({expr}) ** {exponent}"
    started = time.monotonic()
    try:
        value = render_value("{{ " + expr + " }}", CTX)
    except TemplateError as exc:
        assert "bits" in str(exc)
    else:
        assert isinstance(value, int) and value.bit_length() <= 2 * MAX_INT_BITS
    try:
        text = render_value("{{ 'ab' * " + str(count) + " }}", CTX)
    except TemplateError as exc:
        assert 2 * count > MAX_RESULT and "repetition" in str(exc)
    else:
        assert len(text) == 2 * count <= MAX_RESULT
    assert time.monotonic() - started < 2
