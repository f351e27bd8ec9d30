"""The built-in actions against the tool contract, plus llm.chat's own behaviour."""

from __future__ import annotations

from typing import Any

import pytest

from flowyard.builtin.actions import ChatAction, EchoAction, LogAction, SleepAction
from flowyard.errors import ToolError
from flowyard.testing import ToolContract


class TestEchoContract(ToolContract):
    @pytest.fixture
    def tool(self) -> Any:
        return EchoAction()

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"value": {"nested": [1, "two"]}}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"value": 1, "other": 2}


class TestLogContract(ToolContract):
    @pytest.fixture
    def tool(self) -> Any:
        return LogAction()

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"message": "hello", "level": "warning"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"message": "hello", "level": "loud"}


class TestSleepContract(ToolContract):
    @pytest.fixture
    def tool(self) -> Any:
        return SleepAction()

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"seconds": 0.001}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"seconds": -1}


class TestChatContract(ToolContract):
    @pytest.fixture
    def tool(self) -> Any:
        return ChatAction()

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"prompt": "hi there", "model": "fake/echo", "max_tokens": 10}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"model": "fake/echo"}  # neither prompt nor messages


@pytest.mark.anyio
async def test_chat_builds_messages_and_parses_structured_output(tool_context: Any,
                                                                 fake_provider: Any) -> None:
    chat = ChatAction()
    text = await chat.invoke({"system": "be brief", "prompt": "q2",
                              "messages": [{"role": "user", "content": "q1"},
                                           {"role": "assistant", "content": "a1"}],
                              "model": "fake/echo", "temperature": 0.2}, tool_context)
    request = fake_provider.requests[-1]
    assert [(m.role, m.text) for m in request.messages] == [
        ("system", "be brief"), ("user", "q1"), ("assistant", "a1"), ("user", "q2")]
    assert request.temperature == 0.2 and request.idempotency_key == "test-idempotency-key"
    assert text == "echo: q2"
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fake_provider.add('{"n": 3}', "not json", '{"n": "x"}')
    assert await chat.invoke({"prompt": "n?", "model": "fake/echo", "response_schema": schema},
                             tool_context) == {"n": 3}
    with pytest.raises(ToolError, match="not valid JSON") as info:
        await chat.invoke({"prompt": "n?", "model": "fake/echo", "response_schema": schema,
                           "max_validation_retries": 0}, tool_context)
    assert info.value.retriable
    with pytest.raises(ToolError, match="does not match response_schema"):
        await chat.invoke({"prompt": "n?", "model": "fake/echo", "response_schema": schema,
                           "max_validation_retries": 0}, tool_context)
