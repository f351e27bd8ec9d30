"""Typed outputs (issue 26, item 5): ``chat_typed``, ``llm.chat`` with ``response_schema`` and
agents with an output type, on the scripted fake provider: an invalid first answer is sent back
with its validation errors, the second (valid) one is returned as the type; when the re-asks
run out, a clear :class:`OutputValidationError`."""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from typing import Any, Literal

import attrs
import flowyard
import pydantic
import pytest
from flowyard import OutputValidationError, chat_typed
from flowyard.agent import Agent
from flowyard.builtin.fake import FakeProvider
from flowyard.llm.typed import output_type_of
from flowyard.models import Event, ToolCall
from flowyard.stack import Stack


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class ItemP(pydantic.BaseModel):
    name: str
    qty: int


class InvoiceP(pydantic.BaseModel):
    customer: str
    items: list[ItemP]


@dataclasses.dataclass
class ItemD:
    name: str
    qty: int


@dataclasses.dataclass
class InvoiceD:
    customer: str
    items: list[ItemD]
    note: str | None = None


@attrs.define
class ItemA:
    name: str
    qty: int


@attrs.define
class InvoiceA:
    customer: str
    items: list[ItemA]
    color: Color = Color.RED


class ItemT(typing.TypedDict):
    name: str
    qty: int


class InvoiceT(typing.TypedDict):
    customer: str
    items: list[ItemT]


@dataclasses.dataclass
class Node:
    child: Node | None = None


VALID = '{"customer": "Ada", "items": [{"name": "pen", "qty": 2}]}'
#: qty is not an integer and name is missing: two errors at two paths
INVALID = '{"customer": "Ada", "items": [{"qty": "two"}]}'


def expected(tp: Any) -> Any:
    if tp is InvoiceP:
        return InvoiceP(customer="Ada", items=[ItemP(name="pen", qty=2)])
    if tp is InvoiceD:
        return InvoiceD("Ada", [ItemD("pen", 2)])
    if tp is InvoiceA:
        return InvoiceA("Ada", [ItemA("pen", 2)])
    return {"customer": "Ada", "items": [{"name": "pen", "qty": 2}]}


class Plugin:
    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    @flowyard.hookimpl
    def register_providers(self, register: Any, config: Any) -> None:
        register(self.provider.name, self.provider)

    @flowyard.hookimpl
    def register_tools(self, register: Any, config: Any) -> None:
        register("lookup", flowyard.tool(name="lookup")(lookup))


def lookup(name: str) -> str:
    """Return a customer's id.

    Args:
        name: the customer's name.
    """
    return f"id-{name}"


TYPES = [InvoiceP, InvoiceD, InvoiceA, InvoiceT]


@pytest.mark.anyio
@pytest.mark.parametrize("tp", TYPES, ids=lambda t: t.__name__)
async def test_invalid_first_answer_is_sent_back_with_its_errors(tp: Any) -> None:
    provider = FakeProvider(script=[INVALID, VALID])
    async with Stack([Plugin(provider)]) as stack:
        value = await chat_typed(stack.llm, "Extract the invoice.", tp, model="fake/echo")
    assert value == expected(tp) and type(value) is type(expected(tp))
    first, second = provider.requests
    assert first.response_schema == output_type_of(tp).schema
    assert first.response_schema["type"] == "object"
    assert [m.role for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[1].text == INVALID
    feedback = second.messages[2].text
    assert "does not match the required" in feedback and tp.__name__ in feedback
    assert "items[0]" in feedback and "qty" in feedback  # where the errors are
    assert "name" in feedback  # the missing field


@pytest.mark.anyio
@pytest.mark.parametrize("tp", TYPES, ids=lambda t: t.__name__)
async def test_limit_exhausted_is_a_clear_error(tp: Any) -> None:
    provider = FakeProvider(script=["not json at all", INVALID, INVALID])
    async with Stack([Plugin(provider)]) as stack:
        with pytest.raises(OutputValidationError) as info:
            await chat_typed(stack.llm, "Extract.", tp, model="fake/echo",
                             max_validation_retries=2)
    err = info.value
    assert len(provider.requests) == 3 and err.attempts == 3
    assert err.type_name == tp.__name__ and err.answer == INVALID
    assert f"does not match {tp.__name__} after 3 attempt(s)" in str(err)
    assert any("items[0]" in e and "qty" in e for e in err.errors), err.errors
    assert "not valid JSON" in provider.requests[1].messages[-1].text


@pytest.mark.anyio
async def test_no_retries_and_fenced_json() -> None:
    provider = FakeProvider(script=[f"```json\n{VALID}\n```", INVALID])
    async with Stack([Plugin(provider)]) as stack:
        assert await chat_typed(stack.llm, "x", InvoiceD, model="fake/echo") == expected(InvoiceD)
        with pytest.raises(OutputValidationError, match="after 1 attempt"):
            await chat_typed(stack.llm, "x", InvoiceD, model="fake/echo",
                             max_validation_retries=0)
        with pytest.raises(ValueError, match="max_validation_retries must be >= 0"):
            await chat_typed(stack.llm, "x", InvoiceD, model="fake/echo",
                             max_validation_retries=-1)
    assert len(provider.requests) == 2


def test_unsupported_types_are_named() -> None:
    @dataclasses.dataclass
    class Bad:
        when: complex

    with pytest.raises(TypeError, match=r"Bad\.when: the annotation"):
        output_type_of(Bad)
    with pytest.raises(TypeError, match="must be a pydantic model"):
        output_type_of(int)
    with pytest.raises(TypeError, match="not a valid JSON schema"):
        output_type_of({"type": "no-such-type"})

    with pytest.raises(TypeError, match="recursive"):
        output_type_of(Node)
    schema = output_type_of(InvoiceA).schema
    assert schema["properties"]["color"] == {"enum": ["red", "blue"]}
    assert schema["required"] == ["customer", "items"]
    lit = output_type_of(typing.TypedDict("L", {"k": Literal["a", "b"], "t": tuple[int, str]}))
    assert lit.schema["properties"]["k"] == {"enum": ["a", "b"]}
    assert lit.parse('{"k": "a", "t": [1, "x"]}') == {"k": "a", "t": (1, "x")}


@pytest.mark.anyio
async def test_llm_chat_step_reasks_with_the_errors() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    provider = FakeProvider(script=['{"n": "three"}', '{"n": 3}', "nope", "nope"])
    seen: list[Event] = []
    wf = {"name": "typed", "steps": [
        {"id": "ask", "uses": "llm.chat", "with": {"prompt": "n?", "model": "fake/echo",
                                                   "response_schema": schema}},
        {"id": "strict", "uses": "llm.chat", "depends_on": ["ask"],
         "with": {"prompt": "n?", "model": "fake/echo", "response_schema": schema,
                  "max_validation_retries": 1}}],
        "outputs": {"n": "${ask.n}"}}
    stack = Stack([Plugin(provider)])
    stack.events.subscribe(seen.append)
    async with stack:
        result = await stack.run(wf)
    assert result.steps["ask"].output == {"n": 3}
    assert result.steps["strict"].status == "failed"
    assert "does not match response_schema after 2 attempt(s)" in result.steps["strict"].error
    assert "max_validation_retries=1" in result.steps["strict"].error
    second = provider.requests[1]
    assert second.response_schema == schema
    assert "n: 'three' is not of type 'integer'" in second.messages[-1].text
    invalid = [e for e in seen if e.type == "llm.output.invalid"]
    assert [(e.step_id, e.data["attempt"]) for e in invalid] == [
        ("ask", 1), ("strict", 1), ("strict", 2)]
    assert invalid[0].data["errors"] == ["n: 'three' is not of type 'integer'"]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["native", "react"])
async def test_agent_output_type(mode: str) -> None:
    final = (lambda text: text) if mode == "native" else (lambda text: f"Final Answer: {text}")
    first = (ToolCall(id="c1", name="lookup", arguments={"name": "Ada"}) if mode == "native"
             else 'Action: lookup\nAction Input: {"name": "Ada"}')
    provider = FakeProvider(script=[first, final(INVALID), final(VALID)])
    async with Stack([Plugin(provider)]) as stack:
        agent = Agent(model="fake/echo", tools=["lookup"], output_type=InvoiceA, mode=mode)
        result = await agent.run(stack, "Extract the invoice.")
    assert result.output == expected(InvoiceA) and result.turns == 3
    assert result.to_output()["output"] == json.loads(VALID)
    assert "JSON schema" in provider.requests[0].messages[0].text  # in the system prompt
    feedback = provider.requests[2].messages[-1].text
    assert "items[0]" in feedback and "does not match the required InvoiceA" in feedback


@pytest.mark.anyio
async def test_agent_step_with_output_schema_and_limit() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"]}
    provider = FakeProvider(script=['{"town": "Oslo"}', '{"city": "Oslo"}',
                                    "x", "y"])
    wf = {"name": "agentic", "steps": [
        {"id": "ok", "uses": "agent", "with": {"model": "fake/echo", "prompt": "Where?",
                                               "output_schema": schema}},
        {"id": "fails", "uses": "agent", "depends_on": ["ok"],
         "with": {"model": "fake/echo", "prompt": "Where?", "output_schema": schema,
                  "max_validation_retries": 1}}],
        "outputs": {"city": "{{ steps.ok.output.output.city }}"}}
    async with Stack([Plugin(provider)]) as stack:
        result = await stack.run(wf)
        with pytest.raises(flowyard.WorkflowValidationError, match="output_schema"):
            stack.load_workflow({"name": "bad", "steps": [{"id": "a", "uses": "agent", "with": {
                "prompt": "p", "output_schema": {"type": 5}}}]})
    assert result.outputs == {"city": "Oslo"}
    assert result.steps["ok"].output["output"] == {"city": "Oslo"}
    assert result.steps["fails"].status == "failed"
    assert "does not match response_schema after 2 attempt(s)" in result.steps["fails"].error
