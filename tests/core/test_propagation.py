"""``flowyard.propagation``: the current step scope and the outgoing header injectors."""

from __future__ import annotations

import logging
from typing import Any

import flowyard
import pytest
from flowyard import Stack

SEEN: list[Any] = []


@flowyard.tool(name="prop.peek")
def peek() -> str:
    """Record the current step scope and the outgoing headers (a sync tool: a worker thread).

    Returns:
        "ok".
    """
    SEEN.append((flowyard.current_step(), flowyard.outgoing_headers({"A": "own"})))
    return "ok"


class _Plugin:
    @flowyard.hookimpl
    def register_tools(self, register: Any, config: Any) -> None:
        register("prop.peek", peek)


def test_no_injector_returns_the_headers_as_they_are() -> None:
    own = {"A": "1"}
    assert flowyard.outgoing_headers(own) is own
    assert flowyard.outgoing_headers(None) is None
    assert flowyard.current_step() is None


def test_injectors_add_headers_the_requests_own_win_and_remove_works(
        caplog: pytest.LogCaptureFixture) -> None:
    def add(headers: Any) -> None:
        headers["traceparent"] = "00-x"
        headers["A"] = "injected"

    def broken(headers: Any) -> None:
        raise RuntimeError("boom")

    remove = flowyard.add_header_injector(add)
    remove_broken = flowyard.add_header_injector(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="flowyard.propagation"):
            assert flowyard.outgoing_headers({"A": "own"}) == {"A": "own",
                                                               "traceparent": "00-x"}
        assert "outgoing header injector" in caplog.text  # logged, not silent
    finally:
        remove()
        remove_broken()
        remove()  # twice is fine
    assert flowyard.outgoing_headers(None) is None


@pytest.mark.anyio
async def test_the_engine_sets_the_step_scope_of_each_attempt(flowyard_home: Any) -> None:
    SEEN.clear()
    stack = Stack(plugins=[("prop", _Plugin())], config={"storage": {"url": "memory://"}})
    async with stack:
        workflow = {"name": "w", "steps": [
            {"id": "a", "uses": "prop.peek"},
            {"id": "b", "uses": "prop.peek", "for_each": [1, 2], "depends_on": ["a"]}]}
        result = await stack.run(stack.load_workflow(workflow), {})
    assert result.ok, result.error
    scopes = sorted(scope for scope, _ in SEEN)
    assert scopes == [flowyard.StepScope(result.run_id, "a", "a", 1),
                      flowyard.StepScope(result.run_id, "b", "b[0]", 1),
                      flowyard.StepScope(result.run_id, "b", "b[1]", 1)]
    assert all(headers == {"A": "own"} for _, headers in SEEN)
    assert flowyard.current_step() is None
