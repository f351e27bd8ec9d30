"""Templating: typed whole-value references, ${} references, clear errors, and the sandbox
against server-side template injection."""

from __future__ import annotations

from typing import Any

import pytest

from flowyard.errors import TemplateError
from flowyard.stack import Stack
from flowyard.templating import evaluate, find_references, render_value, translate

CTX: dict[str, Any] = {
    "inputs": {"n": 3, "items": ["a", "b"], "name": "Ada", "keys": {"x": 1}},
    "steps": {"fetch": {"output": {"rows": [1, 2, 3], "title": "T", "n": 2.5},
                        "status": "completed"},
              "my-step": {"output": "hyphen", "status": "completed"}},
}


def test_whole_value_reference_keeps_its_type() -> None:
    assert render_value("{{ steps.fetch.output.rows }}", CTX) == [1, 2, 3]
    assert render_value("  {{ inputs.n }} ", CTX) == 3
    assert render_value("{{ steps.fetch.output }}", CTX)["title"] == "T"
    assert render_value("${fetch.rows}", CTX) == [1, 2, 3]
    assert render_value("${fetch.n}", CTX) == 2.5
    assert render_value("${my-step}", CTX) == "hyphen"
    assert render_value("${inputs.items[1]}", CTX) == "b"


def test_mixed_text_renders_to_a_string_and_nested_values_render() -> None:
    assert render_value("n={{ inputs.n }}", CTX) == "n=3"
    assert render_value("hi ${inputs.name}, ${fetch.title}!", CTX) == "hi Ada, T!"
    assert render_value({"a": ["{{ inputs.n * 2 }}", 5], "b": "x"}, CTX) == {"a": [6, 5],
                                                                           "b": "x"}
    assert render_value("{% for r in steps.fetch.output.rows %}{{ r }}{% endfor %}", CTX) == "123"
    assert render_value("{{ inputs.items | tojson }}", CTX) == '["a", "b"]'
    assert render_value("{{ inputs['items'] | length }}", CTX) == 2


def test_mapping_keys_win_over_dict_methods() -> None:
    assert render_value("{{ inputs.items }}", CTX) == ["a", "b"]
    assert render_value("{{ inputs.keys.x }}", CTX) == 1


def test_escaped_reference_stays_literal() -> None:
    assert render_value("cost: $${price}", CTX) == "cost: ${price}"
    assert translate("${a.b}") == '{{ steps["a"].output.b }}'


def test_unresolved_reference_names_step_and_field() -> None:
    with pytest.raises(TemplateError) as info:
        render_value("{{ steps.fetch.output.nope }}", CTX, where="step 'b', field with.x")
    message = str(info.value)
    assert message.startswith("step 'b', field with.x: unresolved reference")
    assert "nope" in message
    with pytest.raises(TemplateError, match="unresolved reference"):
        render_value("hello {{ inputs.missing }}", CTX, where="w")


def test_arithmetic_still_works() -> None:
    assert render_value("{{ 2 ** 10 }}", CTX) == 1024
    assert render_value("{{ 'ab' * 3 }}", CTX) == "ababab"
    assert render_value("{{ inputs.n * 2.5 }}", CTX) == 7.5


def test_conditions() -> None:
    assert evaluate("inputs.n > 2", CTX) is True
    assert evaluate("{{ inputs.n > 5 }}", CTX) is False
    assert evaluate("{{ 'no' }}", CTX) is False
    assert evaluate(True, CTX) is True
    assert evaluate(None, CTX) is True


def test_references_are_found_for_dependency_inference() -> None:
    refs = find_references({"a": "{{ steps.x.output }} {{ steps['y'].output }}",
                            "b": ["${z.field}", "${inputs.q}"]})
    names = sorted((r.kind, r.name) for _, r in refs)
    assert names == [("inputs", "q"), ("steps", "x"), ("steps", "y"), ("steps", "z")]
    (path, err), = find_references({"bad": "{{ oops( }}"})
    assert path == "bad" and isinstance(err, TemplateError)


SSTI_PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__()[0] }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ config }}",
    "{{ config.items() }}",
    "{{ request.application.__globals__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ inputs.__class__ }}",
    "{{ inputs.items.__class__.__base__.__subclasses__() }}",
    "{{ steps.fetch.output.rows.append(4) }}",
    "{{ inputs.keys.update({'x': 2}) }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ 'a'.format.__globals__ }}",
    "{{ '{0.__class__}'.format(inputs) }}",
    "{{ range.__self__ }}",
    "{{ dict.__init__.__globals__ }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ inputs|attr('__class__') }}",
    "{{ (inputs|attr('\\x5f\\x5fclass\\x5f\\x5f')) }}",
    "{{ range(10**9)|list }}",
    "{{ 'a' * 10**9 }}",
    "{{ [0] * 100000000 }}",
    "{{ 9 ** 9 ** 9 }}",
]


@pytest.mark.parametrize("payload", SSTI_PAYLOADS)
def test_injection_payloads_fail_safely(payload: str) -> None:
    before = repr(CTX)
    try:
        result = render_value(payload, CTX, where="step 'x', field with.p")
    except TemplateError as exc:
        assert str(exc).startswith("step 'x', field with.p:")
    else:
        text = repr(result)
        # rendering without error is acceptable only when nothing internal leaked
        for leak in ("<class", "subclasses", "__globals__", "function", "module", "os.",
                     "builtins", "Context", "uid="):
            assert leak not in text, (payload, text)
    assert repr(CTX) == before  # nothing was mutated


@pytest.mark.anyio
async def test_injection_in_a_workflow_fails_the_step_only() -> None:
    stack = Stack()
    wf = {"name": "ssti", "inputs": {"evil": {"type": "string"}}, "steps": [
        {"id": "a", "uses": "echo",
         "with": {"value": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}},
        {"id": "b", "uses": "echo", "with": {"value": "{{ inputs.evil }}"}},
    ], "on_failure": "continue", "outputs": {"b": "${b}"}}
    async with stack:
        result = await stack.run(wf, {"evil": "{{ cycler.__init__.__globals__ }}"})
    assert result.steps["a"].status == "failed"
    assert "forbidden operation" in result.steps["a"].error
    # input values are data: never rendered a second time
    assert result.outputs == {"b": "{{ cycler.__init__.__globals__ }}"}
