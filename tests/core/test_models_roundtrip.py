"""Every public model round-trips through JSON with the one converter (property tests)."""

from __future__ import annotations

from typing import Any

from flowyard import models as m
from flowyard.serialization import from_json, to_json
from hypothesis import given, settings
from hypothesis import strategies as st

text = st.text(max_size=30)
json_scalar = st.none() | st.booleans() | st.integers(-10**6, 10**6) | text | st.floats(
    allow_nan=False, allow_infinity=False, width=32)
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(text, inner, max_size=3), max_leaves=8)
json_dict = st.dictionaries(text, json_value, max_size=3)
tokens = st.integers(0, 10**7)
money = st.none() | st.floats(0, 1000, allow_nan=False)
stamp = st.floats(0, 2e9, allow_nan=False)

tool_calls = st.builds(m.ToolCall, id=text, name=text, arguments=json_dict)
image = st.one_of(
    st.builds(m.ImagePart, url=text, data_base64=st.none()),
    st.builds(m.ImagePart, url=st.none(), data_base64=text),
)
parts = st.lists(st.one_of(st.builds(m.TextPart, text=text), image), max_size=3)
messages = st.builds(
    m.Message, role=st.sampled_from(["system", "user", "assistant", "tool"]),
    content=text | parts, name=st.none() | text, tool_calls=st.lists(tool_calls, max_size=2),
    tool_call_id=st.none() | text)
usage = st.builds(m.Usage, input_tokens=tokens, output_tokens=tokens)
tool_specs = st.builds(m.ToolSpec, name=text, description=text, parameters=json_dict)
price = st.builds(m.ModelPrice, input_per_mtok=st.floats(0, 100), output_per_mtok=st.floats(0, 100),
                  source=text, as_of=text)

STRATEGIES: dict[type, Any] = {
    m.Message: messages,
    m.ChatRequest: st.builds(
        m.ChatRequest, model=text, messages=st.lists(messages, max_size=3),
        tools=st.lists(tool_specs, max_size=2), response_schema=st.none() | json_dict,
        temperature=st.none() | st.floats(0, 2), max_tokens=st.none() | tokens,
        stop=st.lists(text, max_size=2), seed=st.none() | st.integers(0, 2**31),
        idempotency_key=st.none() | text, metadata=json_dict),
    m.ChatResponse: st.builds(m.ChatResponse, message=messages, usage=usage, model=text,
                              provider=text, finish_reason=text, cost_usd=money),
    m.ChatChunk: st.builds(m.ChatChunk, delta=text, tool_calls=st.lists(tool_calls, max_size=2),
                           done=st.booleans(), usage=st.none() | usage,
                           finish_reason=st.none() | text),
    m.ModelInfo: st.builds(m.ModelInfo, provider=text, model=text,
                           context_window=st.none() | tokens,
                           capabilities=st.frozensets(st.sampled_from(
                               ["chat", "tools", "vision", "json", "embeddings"])),
                           price=st.none() | price, metadata=json_dict),
    m.Event: st.builds(m.Event, type=text, run_id=text, step_id=st.none() | text, data=json_dict,
                       time=stamp, seq=st.integers(0, 10**6)),
    m.RunRecord: st.builds(
        m.RunRecord, id=text, workflow_name=text,
        status=st.sampled_from(["pending", "running", "completed", "failed"]),
        inputs=json_dict, outputs=json_dict, error=st.none() | text, workflow=json_dict,
        created_at=stamp, started_at=st.none() | stamp, input_tokens=tokens, cost_usd=money,
        resume_count=st.integers(0, 5), metadata=json_dict),
    m.StepAttempt: st.builds(m.StepAttempt, run_id=text, step_id=text, step_key=text,
                             attempt=st.integers(1, 9), output=json_value,
                             error=st.none() | text, started_at=stamp, cost_usd=money),
    m.LogRecord: st.builds(m.LogRecord, run_id=text, message=text, time=stamp),
    m.CostLine: st.builds(m.CostLine, run_id=text, provider=text, model=text,
                          input_tokens=tokens, output_tokens=tokens, cost_usd=money,
                          agent=st.none() | text, time=stamp),
    m.MemoryEntry: st.builds(m.MemoryEntry, text=text, namespace=text, category=text,
                             score=st.floats(0, 1), metadata=json_dict, source_run=st.none() | text,
                             created_at=stamp),
    m.MemoryHit: st.builds(m.MemoryHit, entry=st.builds(m.MemoryEntry, text=text),
                           score=st.floats(-1, 1)),
    m.Document: st.builds(m.Document, id=text, text=text, source=text, metadata=json_dict),
    m.Chunk: st.builds(m.Chunk, id=text, document_id=text, text=text, score=st.floats(-5, 5)),
}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(STRATEGIES, key=lambda c: c.__name__)).flatmap(
    lambda cls: st.tuples(st.just(cls), STRATEGIES[cls])))
def test_every_model_round_trips_through_json(case: tuple[type, Any]) -> None:
    cls, value = case
    assert from_json(to_json(value), cls) == value


def test_message_helpers_and_text() -> None:
    msg = m.Message.user("look", images=[m.ImagePart(url="https://x/y.png")])
    assert msg.text == "look" and len(msg.images) == 1
    assert from_json(to_json(msg), m.Message) == msg
    assert m.Usage(1, 2) + m.Usage(3, 4) == m.Usage(4, 6)
    assert m.ModelPrice(1.0, 2.0).cost(m.Usage(1_000_000, 500_000)) == 2.0
