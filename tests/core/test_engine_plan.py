"""The step path of issue 17: workflows compiled once per validation, whole-value references
read without Jinja (with Jinja's results and errors), argument checks split between validation
and run time, one storage write per step key's end, immutable memory records.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowyard
from flowyard.builtin.memory_storage import MemoryStorage
from flowyard.errors import TemplateError, WorkflowValidationError
from flowyard.stack import Stack
from flowyard.templating import Compiled, whole_reference
from flowyard.tools import argument_checks

# ------------------------------------------------------------------ whole-value references


def test_whole_reference_parses_only_a_lone_reference() -> None:
    assert whole_reference("${a}") == ("steps", "a", ())
    assert whole_reference("  ${ a.b[2].c-d }\n") == ("steps", "a", ("b", 2, "c-d"))
    assert whole_reference("${inputs.x.y}") == ("inputs", "x", ("y",))
    assert whole_reference("${inputs}") == ("inputs", None, ())
    for text in ("x ${a}", "${a} ${b}", "$${a}", "{{ steps.a.output }}", "${inputs[0]}",
                 "${a}}", "${a.}"):
        assert whole_reference(text) is None, text


def _jinja_only(text: str) -> Compiled:
    """The same template forced through Jinja: a space inside braces is still a whole
    reference, so wrap it in an expression that gives the same value.
    """
    from flowyard.templating import translate

    return Compiled(translate(text))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["a", "b", "items", "keys", "x-y"]), children,
                      max_size=3),
    max_leaves=12)
_path = st.lists(st.sampled_from([".a", ".b", ".items", ".keys", ".x-y", "[0]", "[1]", "[5]"]),
                 max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(output=_json, path=_path, inputs=_json)
def test_direct_lookup_gives_what_jinja_gives(output: Any, path: list[str], inputs: Any) -> None:
    context = {"steps": {"a": {"output": output, "status": "completed", "error": None}},
               "inputs": inputs if isinstance(inputs, dict) else {"x": inputs}}
    for text in ("${a" + "".join(path) + "}", "${inputs.x" + "".join(path) + "}"):
        direct = Compiled(text, "here")
        assert not direct.jinja
        jinja = _jinja_only(text)
        assert jinja.jinja
        try:
            want: Any = jinja.render(context)
        except TemplateError as exc:
            want = ("error", str(exc).split(": ", 1)[-1])
        try:
            got: Any = direct.render(context)
        except TemplateError as exc:
            got = ("error", str(exc).split(": ", 1)[-1])
        if isinstance(want, tuple) and want[0] == "error":
            assert isinstance(got, tuple) and got[0] == "error", (text, got, want)
        else:
            assert got == want and type(got) is type(want), (text, got, want)


def test_a_missing_reference_reports_like_any_template() -> None:
    context: dict[str, Any] = {"steps": {"a": {"output": {"b": 1}}}, "inputs": {}}
    with pytest.raises(TemplateError, match=r"step 'z', field with\.v: unresolved reference: "
                                            r"'dict object' has no attribute 'c'"):
        Compiled({"v": "${a.c}"}, "step 'z', field with").render(context)
    with pytest.raises(TemplateError, match=r"unresolved reference"):
        Compiled("${missing}", "w").render(context)


# ------------------------------------------------------------------ plans


def _tool_stack(storage: Any = None) -> tuple[Stack, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    @flowyard.tool(name="t.collect", idempotent=True)
    async def collect(values: list, limit: int = 10) -> dict:  # type: ignore[type-arg]
        """Record the values.

        Args:
            values: anything.
            limit: a number.
        """
        seen.append({"values": values, "limit": limit})
        return {"n": len(values), "values": values}

    class Plug:
        @flowyard.hookimpl
        def register_tools(self, register: Any, config: Any) -> None:
            register("t.collect", collect)

        @flowyard.hookimpl
        def register_storage(self, register: Any, config: Any) -> None:
            if storage is not None:
                register("rec", lambda url, cfg: storage, default_priority=100,
                         default_url=lambda c: "rec://")

    return Stack([Plug()]), seen


WF = {"name": "plan", "inputs": {"limit": {"type": "any", "default": 3}},
      "steps": [{"id": "a", "uses": "t.collect", "with": {"values": [1, 2]}},
                {"id": "b", "uses": "t.collect",
                 "with": {"values": ["${a.values[1]}", "${a}", "n={{ steps.a.output.n }}"],
                          "limit": "${inputs.limit}"}}],
      "outputs": {"b": "${b.values}"}}


@pytest.mark.anyio
async def test_a_workflow_is_compiled_once_then_runs_without_jinja(monkeypatch: Any) -> None:
    import flowyard.templating as templating

    stack, seen = _tool_stack()
    async with stack:
        first = await stack.run(WF)
        compiled: list[str] = []
        real = templating._jinja.__wrapped__

        def counting(source: str) -> Any:
            compiled.append(source)
            return real(source)

        monkeypatch.setattr(templating, "_jinja", counting)
        parsed: list[str] = []
        monkeypatch.setattr(templating, "_references_in",
                            lambda text: parsed.append(text) or ())
        second = await stack.run(WF)
    assert first.outputs == second.outputs == {"b": [2, {"n": 2, "values": [1, 2]}, "n=2"]}
    assert seen[1]["limit"] == 3
    # the second run used the cached plan: no template compiled, no reference parsed
    assert compiled == [] and parsed == []


@pytest.mark.anyio
async def test_a_templated_value_breaking_its_schema_fails_at_run_time() -> None:
    stack, _ = _tool_stack()
    wf = {"name": "bad", "inputs": {"limit": {"type": "any"}},
          "steps": [{"id": "a", "uses": "t.collect",
                     "with": {"values": [], "limit": "${inputs.limit}"}}]}
    async with stack:
        ok = await stack.run(wf, {"limit": 5})
        bad = await stack.run(wf, {"limit": "five"})
    assert ok.ok
    step = bad.steps["a"]
    assert step.status == "failed" and step.error_type == "ToolInputError"
    assert "limit: 'five' is not of type 'integer'" in (step.error or "")


def test_a_written_argument_breaking_the_schema_fails_validation() -> None:
    stack, _ = _tool_stack()
    with pytest.raises(WorkflowValidationError, match=r"'ten' is not of type 'integer' "
                                                         r"\(steps\[0\]\.with\.limit\)"):
        stack.load_workflow({"name": "bad", "steps": [
            {"id": "a", "uses": "t.collect", "with": {"values": ["${x}"], "limit": "ten"}},
            {"id": "x", "uses": "t.collect", "with": {"values": []}}]})


def test_argument_checks_keep_full_validation_when_the_schema_needs_it() -> None:
    simple = {"type": "object", "properties": {
        "values": {"type": "array", "items": {"type": "integer"}},
        "free": {"description": "anything"}}, "additionalProperties": False}
    checks = argument_checks(simple, [("values", 0), ("free",)])
    assert checks is not None and [path for path, _ in checks] == [("values", 0)]
    assert argument_checks(simple, [("free",)]) == ()
    assert argument_checks(simple, [("other",)]) is None  # additionalProperties false
    for schema in ({"anyOf": [simple]}, {"$ref": "#/$defs/x"},
                   {"type": "object", "properties": {"v": {"type": "array",
                                                           "uniqueItems": True}}}):
        assert argument_checks(schema, [("v", 0)]) is None, schema
    assert argument_checks(simple, [()]) is None  # the whole arguments are one template


# ------------------------------------------------------------------ storage writes


class CountingStorage(MemoryStorage):
    """Memory storage that records which writes the engine makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []

    async def commit_step(self, run_id: str, **records: Any) -> None:
        attempt = records.get("attempt")
        self.calls.append(("commit_step", (attempt.status if attempt else None,
                                           records.get("checkpoint"),
                                           [e.type for e in records.get("events", ())])))
        await super().commit_step(run_id, **records)

    async def save_attempt(self, attempt: Any) -> None:
        self.calls.append(("save_attempt", attempt.status))
        await super().save_attempt(attempt)

    async def save_checkpoint(self, run_id: str, step_key: str, output: Any) -> None:
        self.calls.append(("save_checkpoint", step_key))
        await super().save_checkpoint(run_id, step_key, output)

    async def append_events(self, events: Any) -> None:
        self.calls.append(("append_events", [e.type for e in events]))
        await super().append_events(events)


@pytest.mark.anyio
async def test_a_step_costs_one_write_at_its_start_and_one_at_its_end() -> None:
    storage = CountingStorage()
    stack, _ = _tool_stack(storage)
    wf = {"name": "one", "steps": [{"id": "a", "uses": "t.collect", "with": {"values": [7]}}]}
    async with stack:
        result = await stack.run(wf)
    assert result.ok
    # no save_attempt / save_checkpoint / append_events: every write is one commit_step
    assert storage.calls == [
        ("commit_step", ("running", None, ["run.started", "step.started"])),
        ("commit_step", ("completed", ("a", {"n": 1, "values": [7]}),
                         ["tool.call", "step.completed"])),
        ("commit_step", (None, None, ["run.finished"])),
    ]


@pytest.mark.anyio
async def test_memory_records_do_not_change_when_outputs_are_mutated() -> None:
    storage = MemoryStorage()
    stack, _ = _tool_stack(storage)
    wf = {"name": "m", "steps": [{"id": "a", "uses": "t.collect", "with": {"values": [1]}}]}
    async with stack:
        result = await stack.run(wf)
        result.steps["a"].output["values"].append("changed")
        checkpoints = await storage.load_checkpoints(result.run_id)
        checkpoints["a"]["values"].append("again")
        attempts = await storage.list_attempts(result.run_id)
        attempts[0].output["values"].clear()
        assert (await storage.load_checkpoints(result.run_id))["a"] == {"n": 1, "values": [1]}
        assert (await storage.list_attempts(result.run_id))[0].output == {"n": 1,
                                                                          "values": [1]}
