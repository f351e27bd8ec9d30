"""The local provider on the real SmolLM2 model: generation, constraints, cancellation, pools.

Answers are checked by structure (types, schemas, token counts, determinism under a seed),
never word for word. max_tokens stays small: SmolLM2-135M makes about 50-100 tokens per second
on one CPU core.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import ExitStack, aclosing

import anyio
import attrs
import jsonschema
import pytest
from flowyard.errors import BadRequestError, MalformedResponseError
from flowyard.models import ChatRequest, ImagePart, Message, ToolCall, ToolSpec
from flowyard_llamacpp import LlamaCppProvider, engine
from flowyard_llamacpp.spec import SMOLLM2_POOL_SIZE, ModelSpec, smollm2_path

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WEATHER = ToolSpec(
    name="get_weather", description="Get the current weather of a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"], "additionalProperties": False})
ADD = ToolSpec(
    name="add", description="Add two integers.",
    parameters={"type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"], "additionalProperties": False})


@pytest.fixture
def provider() -> LlamaCppProvider:
    return LlamaCppProvider()


def request(text: str, **kwargs: object) -> ChatRequest:
    kwargs.setdefault("max_tokens", 16)
    return ChatRequest(model="smollm2", messages=[Message.user(text)], **kwargs)  # type: ignore[arg-type]


def idle(provider: LlamaCppProvider) -> bool:
    """True when every llama.cpp context of the chat model is back in its pool."""
    model = engine.get_model(provider.spec("smollm2"))
    return model._idle.qsize() == model.contexts


async def test_chat_answers_with_text_usage_and_zero_cost(provider: LlamaCppProvider) -> None:
    response = await provider.chat(request("Name a colour.", max_tokens=12, seed=7))
    assert response.message.role == "assistant"
    assert response.text.strip()
    assert response.message.tool_calls == []
    assert response.provider == "local" and response.model == "smollm2"
    assert response.usage.input_tokens > 5
    assert 1 <= response.usage.output_tokens <= 12
    assert response.finish_reason in ("stop", "length")
    assert response.cost_usd == 0.0


async def test_max_tokens_caps_the_output(provider: LlamaCppProvider) -> None:
    response = await provider.chat(request("Write a long essay about the sea.", max_tokens=5,
                                           seed=1))
    assert response.usage.output_tokens == 5
    assert response.finish_reason == "length"


async def test_same_seed_same_answer_and_stream_matches_chat(provider: LlamaCppProvider) -> None:
    req = request("Tell me about cats.", max_tokens=20, seed=1234, temperature=0.9)
    first = await provider.chat(req)
    second = await provider.chat(req)
    assert first.text == second.text
    chunks = [c async for c in provider.stream(req)]
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    assert "".join(c.delta for c in chunks) == first.text
    assert chunks[-1].usage == first.usage
    assert chunks[-1].finish_reason == first.finish_reason
    assert len([c for c in chunks if c.delta]) > 3  # streamed piece by piece, not at the end


async def test_stop_sequence_cuts_the_answer_before_it(provider: LlamaCppProvider) -> None:
    req = request("Describe a forest in detail.", max_tokens=24, seed=99)
    full = (await provider.chat(req)).text
    assert len(full) > 20
    stop = full[12:16]  # often spans a token boundary
    cut = await provider.chat(request("Describe a forest in detail.", max_tokens=24, seed=99,
                                      stop=[stop]))
    assert cut.text == full[: full.find(stop)]
    assert cut.finish_reason == "stop"
    streamed = [c async for c in provider.stream(
        request("Describe a forest in detail.", max_tokens=24, seed=99, stop=[stop]))]
    assert "".join(c.delta for c in streamed) == cut.text


async def test_structured_output_satisfies_the_schema(provider: LlamaCppProvider) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["admin", "user", "guest"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 10},
                     "maxItems": 2},
        },
        "required": ["name", "age", "role", "tags"],
        "additionalProperties": False,
    }
    response = await provider.chat(request("Invent a user account.", response_schema=schema,
                                           max_tokens=80, seed=5))
    assert response.finish_reason == "stop"
    jsonschema.validate(json.loads(response.text), schema)


async def test_integer_ranges_are_enforced_by_the_grammar(provider: LlamaCppProvider) -> None:
    schema = {"type": "object",
              "properties": {"score": {"type": "integer", "minimum": 3, "maximum": 7},
                             "delta": {"type": "integer", "exclusiveMinimum": -2,
                                       "exclusiveMaximum": 2}},
              "required": ["score", "delta"], "additionalProperties": False}
    for seed in (1, 2, 3):
        response = await provider.chat(request("Rate the movie Titanic.", response_schema=schema,
                                               max_tokens=30, seed=seed, temperature=1.5))
        value = json.loads(response.text)
        jsonschema.validate(value, schema)


async def test_schema_keywords_the_grammar_cannot_enforce_are_checked(
        provider: LlamaCppProvider) -> None:
    unsatisfiable = {"type": "integer", "not": {"type": "integer"}}
    with pytest.raises(MalformedResponseError, match="violates its JSON Schema") as info:
        await provider.chat(request("Pick a number.", response_schema=unsatisfiable,
                                    max_tokens=12, seed=1))
    assert info.value.retriable


async def test_required_tool_choice_produces_a_valid_call(provider: LlamaCppProvider) -> None:
    response = await provider.chat(request(
        "What is the weather like in Paris today?", tools=[WEATHER, ADD],
        tool_choice="required", max_tokens=48, seed=3))
    assert response.finish_reason == "tool_calls"
    assert response.text == ""
    [call] = response.message.tool_calls
    assert call.id.startswith("call_")
    tool = {"get_weather": WEATHER, "add": ADD}[call.name]
    jsonschema.validate(call.arguments, tool.parameters)


async def test_named_tool_choice_forces_that_tool(provider: LlamaCppProvider) -> None:
    response = await provider.chat(request(
        "What is the weather like in Paris today?", tools=[WEATHER, ADD], tool_choice="add",
        max_tokens=48, seed=3))
    [call] = response.message.tool_calls
    assert call.name == "add"
    jsonschema.validate(call.arguments, ADD.parameters)


async def test_streamed_tool_call_arrives_on_the_final_chunk(provider: LlamaCppProvider) -> None:
    chunks = [c async for c in provider.stream(request(
        "Add 2 and 3.", tools=[WEATHER, ADD], tool_choice="required", max_tokens=48, seed=8))]
    assert "".join(c.delta for c in chunks) == ""  # call JSON is not streamed as text
    final = chunks[-1]
    assert final.done and final.finish_reason == "tool_calls"
    [call] = final.tool_calls
    jsonschema.validate(call.arguments, {"get_weather": WEATHER, "add": ADD}[call.name].parameters)


async def test_auto_tool_choice_gives_a_call_or_plain_text(provider: LlamaCppProvider) -> None:
    for seed in (1, 2):
        response = await provider.chat(request(
            "What is the weather in Rome?", tools=[WEATHER], tool_choice="auto",
            max_tokens=40, seed=seed))
        if response.message.tool_calls:
            [call] = response.message.tool_calls
            assert call.name == "get_weather" and response.finish_reason == "tool_calls"
            jsonschema.validate(call.arguments, WEATHER.parameters)
        else:
            assert response.text and not response.text.lstrip().startswith("{")


async def test_output_opening_with_the_divert_prefix_restarts_under_other_params(
        provider: LlamaCppProvider) -> None:
    """The mechanism behind tool_choice="auto": prose runs unconstrained, and an output
    that opens a call restarts under the call grammar without emitting anything first."""
    model = await provider.load("smollm2")
    prompt = model.format_chat([{"role": "user", "content": "Describe the sea."}])
    base = engine.GenerationParams(max_tokens=12, temperature=0.0, top_p=0.95, top_k=40,
                                   min_p=0.05, repeat_penalty=1.0, seed=1)
    cancel = threading.Event()
    plain = engine.generate(model, prompt, base, cancel)
    assert plain.text and plain.completion_tokens == 12
    diverted_to = attrs.evolve(base, max_tokens=3, grammar='root ::= "ok" [a-z]*')
    seen: list[str] = []
    result = engine.generate(
        model, prompt, attrs.evolve(base, divert_prefix=plain.text[0],
                                    divert_params=diverted_to), cancel, seen.append)
    assert result.text.startswith("ok") and result.completion_tokens <= 3
    assert "".join(seen) == result.text  # nothing of the first attempt leaked out
    kept = engine.generate(model, prompt, attrs.evolve(
        base, divert_prefix="\x00", divert_params=diverted_to), cancel)
    assert kept.text == plain.text  # no divert: the unconstrained answer, unchanged


async def test_tool_choice_none_ignores_the_tools(provider: LlamaCppProvider) -> None:
    response = await provider.chat(request("Say hello.", tools=[WEATHER], tool_choice="none",
                                           max_tokens=10, seed=2))
    assert response.message.tool_calls == [] and response.text


async def test_conversation_with_a_tool_result_continues(provider: LlamaCppProvider) -> None:
    call = ToolCall(id="call_1", name="get_weather", arguments={"city": "Oslo"})
    messages = [
        Message.system("You are a weather assistant."),
        Message.user("Weather in Oslo?"),
        Message.assistant("", tool_calls=[call]),
        Message.tool("call_1", json.dumps({"temperature_c": -3, "sky": "snow"}),
                     name="get_weather"),
    ]
    response = await provider.chat(ChatRequest(model="smollm2", messages=messages,
                                               tools=[WEATHER], max_tokens=24, seed=4))
    assert response.text or response.message.tool_calls
    assert response.usage.input_tokens > 40  # the history, the tool list and the result


async def test_cancelling_a_long_generation_returns_promptly(provider: LlamaCppProvider) -> None:
    await provider.chat(request("Hi", max_tokens=2))  # loaded and warm
    cancelled_at = 0.0
    finished = False

    async def long_generation() -> None:
        nonlocal finished
        await provider.chat(request("Write a very long story about dragons.", max_tokens=2000,
                                    seed=1))
        finished = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(long_generation)
        await anyio.sleep(1.0)  # well into token generation (2000 tokens take minutes)
        cancelled_at = time.perf_counter()
        tg.cancel_scope.cancel()
    assert not finished
    # the worker thread checks the cancel flag before every token
    assert time.perf_counter() - cancelled_at < 2.0
    assert idle(provider)
    after = await provider.chat(request("Say yes.", max_tokens=4, seed=1))
    assert 1 <= after.usage.output_tokens <= 4


async def test_cancelling_a_stream_consumer_stops_generation(provider: LlamaCppProvider) -> None:
    seen = 0
    cancelled_at = 0.0
    with anyio.CancelScope() as scope:
        async for chunk in provider.stream(request("Write a very long poem.", max_tokens=2000)):
            seen += 1
            if chunk.delta and seen >= 3:
                cancelled_at = time.perf_counter()
                scope.cancel()
    assert scope.cancelled_caught and seen >= 3
    # the generating thread notices within a token and hands the context back
    assert time.perf_counter() - cancelled_at < 2.0
    assert idle(provider)


async def test_breaking_out_of_a_stream_releases_the_model(provider: LlamaCppProvider) -> None:
    async with aclosing(provider.stream(request("Count from one to a thousand.",
                                                max_tokens=2000))) as stream:
        async for chunk in stream:
            if chunk.delta:
                break
    assert idle(provider)
    response = await provider.chat(request("Say hi.", max_tokens=3))
    assert response.usage.output_tokens >= 1


async def test_generation_runs_off_the_event_loop(provider: LlamaCppProvider) -> None:
    await provider.chat(request("Hi", max_tokens=2))
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        started = time.perf_counter()
        await provider.chat(request("Write a story.", max_tokens=40, seed=3))
        elapsed = time.perf_counter() - started
        done = True
    # a blocked loop would tick about once; a free one ticks every ~10 ms
    assert ticks >= max(3, int(elapsed / 0.01) // 10)


async def test_concurrent_calls_share_the_pool_safely(provider: LlamaCppProvider) -> None:
    """Three calls on the built-in model's pool of two: one waits for a context."""
    results: dict[int, str] = {}

    async def one(i: int) -> None:
        results[i] = (await provider.chat(request("Say a word.", max_tokens=6, seed=i))).text

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(one, i)
    assert len(results) == 3 and all(results.values())
    alone = await provider.chat(request("Say a word.", max_tokens=6, seed=1))
    assert alone.text == results[1]  # calls do not disturb each other
    model = engine.get_model(provider.spec("smollm2"))
    assert 1 <= model.contexts <= model.pool_size == SMOLLM2_POOL_SIZE


async def test_a_call_waiting_for_a_busy_context_can_be_cancelled(provider: LlamaCppProvider
                                                                  ) -> None:
    await provider.chat(request("Hi", max_tokens=2))
    model = engine.get_model(provider.spec("smollm2"))
    holding = threading.Event()
    release = threading.Event()

    def hold_every_context() -> None:
        # generations that cannot end early: the pool's contexts are held until released
        with ExitStack() as held:
            for _ in range(model.pool_size):
                held.enter_context(model.acquire())
            holding.set()
            release.wait(30)

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, hold_every_context)
        while not holding.is_set():
            await anyio.sleep(0.01)
        started = time.perf_counter()
        with anyio.move_on_after(0.5) as waiting:
            await provider.chat(request("Say hi.", max_tokens=4))
        waiting_cancelled_in = time.perf_counter() - started - 0.5
        assert waiting.cancelled_caught
        assert not release.is_set()  # it gave up while the context was still busy
        release.set()
    assert waiting_cancelled_in < 1.0
    assert idle(provider)
    # the context is usable again
    assert (await provider.chat(request("Hi", max_tokens=2))).usage.output_tokens > 0


async def test_pool_runs_generations_in_parallel_contexts() -> None:
    path = smollm2_path()
    spec = ModelSpec(alias="pooled", path=path, n_ctx=512, pool_size=2, source="test")
    provider = LlamaCppProvider({"pooled": spec})
    inside = 0
    peak = 0
    lock = threading.Lock()
    model = await provider.load("pooled")
    original = model.acquire

    def counting(cancel: threading.Event | None = None):  # type: ignore[no-untyped-def]
        class _Ctx:
            def __enter__(self_inner):  # type: ignore[no-untyped-def]
                nonlocal inside, peak
                self_inner.cm = original(cancel)
                llm = self_inner.cm.__enter__()
                with lock:
                    inside += 1
                    peak = max(peak, inside)
                return llm

            def __exit__(self_inner, *exc):  # type: ignore[no-untyped-def]
                nonlocal inside
                with lock:
                    inside -= 1
                return self_inner.cm.__exit__(*exc)

        return _Ctx()

    model.acquire = counting  # type: ignore[method-assign]
    try:
        async with anyio.create_task_group() as tg:
            for i in range(2):
                tg.start_soon(provider.chat, ChatRequest(
                    model="pooled", messages=[Message.user("Tell a story.")], max_tokens=24,
                    seed=i))
    finally:
        model.acquire = original  # type: ignore[method-assign]
    assert model.contexts == 2
    assert peak == 2


async def test_a_context_gets_its_share_of_the_cores_when_lent() -> None:
    """Alone, a context of a pool of two gets what a pool of one gets (all cores for the
    prompt); two working at once get ``cores // 2`` each; a configured ``n_threads`` stays."""
    spec = ModelSpec(alias="shared", path=smollm2_path(), n_ctx=512, pool_size=2,
                     source="test")
    model = engine.get_model(spec)
    alone = (engine.default_threads(1), engine.generation_threads(1))
    both = (engine.default_threads(2), engine.generation_threads(2))

    def threads(llm: object) -> tuple[int, int]:
        return (llm.n_threads_batch, llm.n_threads)  # type: ignore[attr-defined]

    def take_two() -> None:
        with model.acquire() as first:
            assert threads(first) == alone
            with model.acquire() as second:
                assert second is not first and threads(second) == both
        with model.acquire() as again:  # alone again: all its share back
            assert threads(again) == alone

    await anyio.to_thread.run_sync(take_two)
    fixed = engine.get_model(attrs.evolve(spec, n_threads=1))
    assert fixed is not model

    def take_fixed() -> None:
        with fixed.acquire() as llm:
            assert threads(llm) == (1, 1)

    await anyio.to_thread.run_sync(take_fixed)


async def test_models_load_once_per_process_and_are_shared() -> None:
    a, b = LlamaCppProvider(), LlamaCppProvider()
    same_file = ModelSpec(alias="again", path=smollm2_path(), source="test")
    c = LlamaCppProvider({"again": same_file})
    loaded_a = await a.load("smollm2")
    assert await b.load("smollm2") is loaded_a
    assert await c.load("again") is loaded_a  # same file and load settings, other alias
    await a.aclose()
    await a.aclose()
    assert (await b.chat(request("Hi", max_tokens=2))).usage.output_tokens >= 1


async def test_aliases_sharing_a_file_keep_their_own_settings() -> None:
    path = smollm2_path()
    provider = LlamaCppProvider({
        "short": ModelSpec(alias="short", path=path, max_tokens=3, source="test"),
        "longer": ModelSpec(alias="longer", path=path, max_tokens=5, source="test"),
    })
    assert await provider.load("short") is await provider.load("longer")
    for alias, cap in (("short", 3), ("longer", 5)):
        response = await provider.chat(ChatRequest(
            model=alias, messages=[Message.user("Write a long essay.")], seed=1))
        assert response.model == alias and response.usage.output_tokens == cap


async def test_embeddings_are_normalised_and_deterministic(provider: LlamaCppProvider) -> None:
    vectors = await provider.embed(["the cat sat on the mat", "stock markets fell",
                                    "the cat sat on the mat"], model="smollm2")
    assert len(vectors) == 3 and {len(v) for v in vectors} == {576}
    for v in vectors:
        assert abs(sum(x * x for x in v) - 1.0) < 1e-3
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-5)
    assert vectors[0] != pytest.approx(vectors[1], abs=1e-3)
    assert await provider.embed([], model="smollm2") == []


async def test_list_models_reads_the_gguf_metadata(provider: LlamaCppProvider) -> None:
    [info] = await provider.list_models()
    assert info.ref == "local/smollm2"
    assert info.context_window == 4096  # trained 8192, capped by default
    assert info.metadata["architecture"] == "llama"
    assert info.metadata["trained_context_length"] == 8192
    assert info.metadata["embedding_length"] == 576
    assert info.price is not None
    assert (info.price.input_per_mtok, info.price.output_per_mtok) == (0.0, 0.0)
    assert {"chat", "streaming", "tools", "json", "embeddings"} <= info.capabilities


# ----------------------------------------------------------------------------- errors


async def test_unknown_model_lists_the_served_ones(provider: LlamaCppProvider) -> None:
    with pytest.raises(BadRequestError, match="smollm2"):
        await provider.chat(ChatRequest(model="nope", messages=[Message.user("hi")]))


async def test_missing_gguf_file_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "absent.gguf"
    provider = LlamaCppProvider({"gone": ModelSpec(alias="gone", path=missing,
                                                   source="[llamacpp.models.gone]")})
    with pytest.raises(BadRequestError, match=r"absent\.gguf"):
        await provider.chat(ChatRequest(model="gone", messages=[Message.user("hi")]))
    [info] = await provider.list_models()
    assert "absent.gguf" in info.metadata["error"] and not info.capabilities


async def test_bad_requests_are_rejected_before_generating(provider: LlamaCppProvider) -> None:
    image = ImagePart(url="http://127.0.0.1/x.png")
    bad = [
        ChatRequest(model="smollm2", messages=[Message.user("look", images=[image])]),
        request("hi", tools=[WEATHER], tool_choice="nonexistent"),
        request("hi", tool_choice="required"),
        request("hi", response_schema={"type": "object", "properties": {"x": {"type": "x"}}}),
        request("hi", max_tokens=0),
        request("hi", response_schema={"type": "object", "required": "name"}),
        request("hi", temperature=-1.0),
        ChatRequest(model="smollm2", messages=[]),
    ]
    for req in bad:
        with pytest.raises(BadRequestError):
            await provider.chat(req)
    assert idle(provider)


async def test_prompt_longer_than_the_context_is_rejected() -> None:
    tiny = LlamaCppProvider({"tiny": ModelSpec(alias="tiny", path=smollm2_path(), n_ctx=64,
                                               source="test")})
    with pytest.raises(BadRequestError, match="context window is 64 tokens"):
        await tiny.chat(ChatRequest(model="tiny", messages=[Message.user("word " * 200)]))
