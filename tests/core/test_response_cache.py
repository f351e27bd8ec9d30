"""The LLM response cache: opt-in per llm.chat step, keyed by the normalised request, hits
with zero cost and no provider call, TTLs, damaged entries, and refusing sampled requests."""

from __future__ import annotations

from typing import Any

import pytest

import flowyard
from flowyard.builtin.fake import FakeProvider
from flowyard.engine.validate import validate_workflow
from flowyard.errors import StorageError, WorkflowValidationError
from flowyard.llm.cache import (
    CACHE_NAMESPACE,
    CachedResponse,
    CachePolicy,
    ResponseCache,
    request_key,
)
from flowyard.models import Event, Message
from flowyard.stack import Stack


class Plugin:
    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    @flowyard.hookimpl
    def register_providers(self, register: Any, config: Any) -> None:
        register(self.provider.name, self.provider)


def _stack(provider: FakeProvider, **config: Any) -> Stack:
    return Stack([Plugin(provider)], config=config or None)


def _workflow(cache: Any = True, **extra: Any) -> dict[str, Any]:
    step = {"uses": "llm.chat", "with": {"prompt": "What is 2 + 2?", "model": "fake/priced",
                                         "temperature": 0, "max_tokens": 20, "cache": cache,
                                         **extra}}
    return {"name": "cached", "steps": [{"id": "first", **step},
                                        {"id": "second", "depends_on": ["first"], **step}],
            "outputs": {"a": "${first}", "b": "${second}"}}


@pytest.mark.anyio
async def test_a_repeated_request_is_answered_from_the_cache_at_zero_cost() -> None:
    provider = FakeProvider(script=["four", "FIVE (a second call was made)"])
    stack = _stack(provider)
    seen: list[Event] = []
    stack.events.subscribe(seen.append)
    async with stack:
        result = await stack.run(_workflow())
        costs = await stack.storage.list_costs(result.run_id)
        again = await stack.run(_workflow())  # a later run shares the entries too
    assert result.status == "completed" and again.status == "completed"
    assert result.outputs == {"a": "four", "b": "four"}
    assert again.outputs == {"a": "four", "b": "four"}
    assert len(provider.requests) == 1
    kinds = [(e.type, e.step_id) for e in seen if e.type.startswith("llm.cache")]
    assert kinds == [("llm.cache.miss", "first"), ("llm.cache.hit", "second"),
                     ("llm.cache.hit", "first"), ("llm.cache.hit", "second")]
    hit = next(e for e in seen if e.type == "llm.cache.hit")
    assert hit.data["cost_usd"] == 0.0
    assert hit.data["saved_usd"] == pytest.approx(costs[0].cost_usd) and costs[0].cost_usd > 0
    assert len(costs) == 1  # the hit wrote no cost line
    assert result.cost_usd == pytest.approx(costs[0].cost_usd)
    assert again.cost_usd == 0.0


@pytest.mark.anyio
async def test_requests_that_differ_in_anything_do_not_share_an_entry() -> None:
    provider = FakeProvider(script=["one", "two", "three", "four"])
    stack = _stack(provider)
    wf = {"name": "different", "steps": [
        {"id": "a", "uses": "llm.chat", "with": {"prompt": "q", "model": "fake/priced",
                                                 "temperature": 0, "cache": True}},
        {"id": "b", "uses": "llm.chat", "with": {"prompt": "q", "model": "fake/priced",
                                                 "temperature": 0, "max_tokens": 5,
                                                 "cache": True}},
        {"id": "c", "uses": "llm.chat", "with": {"prompt": "q", "model": "fake/echo",
                                                 "temperature": 0, "cache": True}},
        {"id": "d", "uses": "llm.chat", "with": {"prompt": "q", "system": "terse",
                                                 "model": "fake/priced", "seed": 7,
                                                 "cache": True}},
    ]}
    async with stack:
        result = await stack.run(wf)
    assert result.status == "completed"
    assert len(provider.requests) == 4
    base = [Message.user("q")]
    keys = {request_key("fake/priced", base, {"temperature": 0}),
            request_key("fake/priced", base, {"temperature": 0, "max_tokens": 5}),
            request_key("fake/echo", base, {"temperature": 0}),
            request_key("fake/priced", base, {"seed": 7}),
            request_key("fake/priced", [Message.user("q ")], {"temperature": 0})}
    assert len(keys) == 5
    # keys ignore what does not change the answer (the cache option itself, stream)
    assert request_key("m", base, {"temperature": 0, "cache": True, "stream": True}) == \
        request_key("m", base, {"temperature": 0})


def test_a_sampled_request_with_cache_is_refused_at_validation() -> None:
    stack = _stack(FakeProvider())
    wf = _workflow()
    for step in wf["steps"]:
        step["with"]["temperature"] = 0.7
    with pytest.raises(WorkflowValidationError) as info:
        validate_workflow(stack, stack.load_workflow(wf))
    assert "steps[0].with.cache" in str(info.value)
    assert "temperature: 0 or seed" in str(info.value)
    wf = _workflow(cache={"allow_nondeterministic": True, "ttl_s": 60})
    for step in wf["steps"]:
        step["with"]["temperature"] = 0.7
    validate_workflow(stack, stack.load_workflow(wf))  # allowed when asked for


@pytest.mark.anyio
async def test_a_templated_temperature_is_checked_when_the_step_runs() -> None:
    provider = FakeProvider(script=["x"])
    stack = _stack(provider)
    wf = {"name": "late", "inputs": {"t": {"type": "number"}}, "steps": [
        {"id": "a", "uses": "llm.chat", "with": {"prompt": "q", "model": "fake/priced",
                                                 "temperature": "{{ inputs.t }}",
                                                 "cache": True}}]}
    async with stack:
        result = await stack.run(wf, {"t": 0.9}, )
    assert result.status == "failed"
    assert "only deterministic requests are cached" in str(result.error)
    assert provider.requests == []


@pytest.mark.anyio
async def test_entries_expire_after_their_ttl() -> None:
    clock = [1000.0]
    stack = _stack(FakeProvider())
    async with stack:
        cache = ResponseCache(stack.storage, now=lambda: clock[0])
        await cache.put("k", CachedResponse("hello", cost_usd=0.5), ttl_s=10)
        assert (await cache.get("k")).text == "hello"
        assert await cache.stats() == {"entries": 1, "expired": 0, "damaged": 0,
                                       "saved_usd_per_hit": 0.5}
        clock[0] += 10.5
        assert await cache.get("k") is None
        assert await stack.storage.kv_get(CACHE_NAMESPACE, "k") is None  # deleted when read
        await cache.put("forever", CachedResponse("kept"), ttl_s=None)
        clock[0] += 10 ** 9
        assert (await cache.get("forever")).text == "kept"
        assert await cache.clear() == 1


@pytest.mark.anyio
async def test_a_damaged_entry_is_a_storage_error_naming_its_key() -> None:
    stack = _stack(FakeProvider())
    async with stack:
        cache = ResponseCache(stack.storage)
        await stack.storage.kv_set(CACHE_NAMESPACE, "bad", {"text": 3, "evil": "<script>"})
        with pytest.raises(StorageError, match="llm.cache/bad is damaged"):
            await cache.get("bad")
        await cache.put("good", CachedResponse("ok"), ttl_s=None)
        assert (await cache.stats())["damaged"] == 1
        assert await cache.clear(expired_only=True) == 1  # the damaged one only
        assert (await cache.get("good")).text == "ok"


@pytest.mark.parametrize("value, message", [
    ("yes", "must be true, false or a table"),
    ({"ttl": 3}, "unknown key"),
    ({"ttl_s": -1}, "ttl_s must be a number of seconds >= 0"),
    ({"allow_nondeterministic": "no"}, "must be true or false"),
])
def test_malformed_cache_options_are_clear_errors(value: Any, message: str) -> None:
    with pytest.raises(flowyard.ConfigError, match=message):
        CachePolicy.from_argument(value, where="with.cache")
    assert CachePolicy.from_argument(False) is None
    assert CachePolicy.from_argument({"ttl_s": 0}).ttl_s is None


@pytest.mark.anyio
async def test_an_answer_that_fails_response_schema_is_not_cached() -> None:
    provider = FakeProvider(script=["not json", '{"n": 4}', '{"n": 5}'])
    stack = _stack(provider)
    step = {"uses": "llm.chat", "with": {
        "prompt": "2 + 2 as JSON", "model": "fake/priced", "temperature": 0, "cache": True,
        "response_schema": {"type": "object", "properties": {"n": {"type": "integer"}},
                            "required": ["n"]}}}
    wf = {"name": "typed-cache", "steps": [{"id": "a", **step}],
          "outputs": {"n": "${a.n}"}}
    async with stack:
        first = await stack.run(wf)
        second = await stack.run(wf)
    assert first.outputs == second.outputs == {"n": 4}
    # the invalid first answer was re-asked with its errors and never stored; the answer
    # that validated is stored under the original request and answers the second run
    assert len(provider.requests) == 2
    assert second.cost_usd == 0.0 and first.cost_usd > 0
    async with stack:
        stats = await ResponseCache(stack.storage).stats()
    assert stats["entries"] == 1
    assert stats["saved_usd_per_hit"] == pytest.approx(first.cost_usd)  # both calls' cost


# ----------------------------------------------------------------------------- gateway level


@pytest.mark.anyio
async def test_the_python_api_caches_deterministic_calls_and_refuses_sampled_ones() -> None:
    provider = FakeProvider(script=["first", "second", "third"])
    stack = _stack(provider)
    async with stack:
        one = await stack.llm.chat("hi", model="fake/priced", temperature=0, cache=True)
        two = await stack.llm.chat("hi", model="fake/priced", temperature=0, cache=True)
        three = await stack.llm.chat("hi", model="fake/priced", temperature=0)  # not asked
        with pytest.raises(ValueError, match="only deterministic requests are cached"):
            await stack.llm.chat("hi", model="fake/priced", temperature=0.5, cache=True)
    assert (one.text, two.text, three.text) == ("first", "first", "second")
    assert two.cost_usd == 0.0 and two.raw["cache"] == "hit"
    assert two.raw["saved_usd"] == pytest.approx(one.cost_usd)
    assert len(provider.requests) == 2


@pytest.mark.anyio
async def test_a_model_wide_cache_serves_an_agent_including_its_tool_calls() -> None:
    from flowyard.models import ToolCall

    def script() -> list[Any]:
        return [ToolCall(id="c1", name="echo", arguments={"value": "x"}), "done: x"]

    provider = FakeProvider(script=script() + script())
    stack = _stack(provider, cache={"models": {"fake/priced": {"ttl_s": 600}}})
    seen: list[Event] = []
    stack.events.subscribe(seen.append)
    wf = {"name": "agent-cache", "steps": [{"id": "a", "uses": "agent", "with": {
        "prompt": "echo x", "model": "fake/priced", "tools": ["echo"], "temperature": 0}}],
        "outputs": {"answer": "${a.answer}"}}
    async with stack:
        first = await stack.run(wf)
        second = await stack.run(wf)
        sampled = await stack.llm.chat("hi", model="fake/priced", temperature=1)
    assert first.outputs == second.outputs == {"answer": "done: x"}
    # two turns the first time; the second run's turns (same conversation, same tools,
    # the tool call replayed with its id) are both hits; the sampled call is not cached
    assert len(provider.requests) == 3
    assert sampled.raw.get("cache") is None
    hits = [e for e in seen if e.type == "llm.cache.hit"]
    assert [e.run_id for e in hits] == [second.run_id, second.run_id]
    assert second.cost_usd == 0.0


@pytest.mark.anyio
async def test_an_agent_step_opts_in_with_cache() -> None:
    provider = FakeProvider(script=["answer one", "answer two"])
    stack = _stack(provider)
    wf = {"name": "agent-step-cache", "steps": [{"id": "a", "uses": "agent", "with": {
        "prompt": "say something", "model": "fake/priced", "temperature": 0,
        "cache": {"ttl_s": 60}}}], "outputs": {"answer": "${a.answer}"}}
    async with stack:
        first = await stack.run(wf)
        second = await stack.run(wf)
    assert first.outputs == second.outputs == {"answer": "answer one"}
    assert len(provider.requests) == 1
