"""Contract test suites, one per plugin family.

Subclass a suite in your plugin's tests (the class name must start with ``Test``), provide the
fixture it names, and set the class attributes it documents. Every test is an anyio test, so
it runs on whichever backends the ``anyio_backend`` fixture gives (asyncio by default; the
flowyard repository runs asyncio and trio).

The suites check the promises written in :mod:`flowyard.interfaces`: shapes, error types,
and behaviour a user relies on (durability of storage writes, namespace isolation of memory,
idempotent re-indexing...). They do not check model quality: answers are checked by
structure, never word for word.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import anyio
import pytest

from flowyard.audit import GENESIS_HASH, hash_audit, verify_audit
from flowyard.errors import (
    ProviderError,
    RunNotFoundError,
    StorageError,
    TaskNotFoundError,
    ToolInputError,
    UnknownNameError,
    WorkflowValidationError,
)
from flowyard.interfaces import (
    RouteRequest,
    RunLease,
    RunQuery,
    SupportsAuditLog,
    SupportsIdempotentRuns,
    SupportsKeyValueListing,
    SupportsStepCommit,
    SupportsTaskQueue,
    TaskQuery,
)
from flowyard.models import (
    AuditRecord,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    CostLine,
    Document,
    Event,
    LogRecord,
    MemoryEntry,
    Message,
    ModelInfo,
    ModelPrice,
    RunRecord,
    StepAttempt,
    TaskRecord,
    ToolSpec,
    new_id,
)

__all__ = [
    "ExecutorContract",
    "ProviderContract",
    "RouterContract",
    "WorkflowLoaderContract",
    "ToolContract",
    "StorageContract",
    "MemoryContract",
    "RetrieverContract",
    "SharedLimitsContract",
]

_ANYIO = [pytest.mark.anyio]


# ============================================================================ providers


class ProviderContract:
    """What every :class:`~flowyard.interfaces.Provider` promises.

    Provide a fixture ``provider`` returning the provider object. Class attributes:

    - ``model``: a model id the provider serves (required).
    - ``supports_streaming``, ``supports_tools``, ``supports_json``, ``supports_embeddings``:
      which optional checks apply; a check for a capability set to False is removed from the
      subclass (it is not collected at all, rather than skipped).
    - ``embedding_model``: the model id for embeddings (defaults to ``model``).
    - ``max_tokens``: the small output cap used by the checks (tokens).
    """

    pytestmark = _ANYIO

    model: ClassVar[str] = ""
    supports_streaming: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True
    supports_json: ClassVar[bool] = True
    supports_embeddings: ClassVar[bool] = False
    embedding_model: ClassVar[str | None] = None
    max_tokens: ClassVar[int] = 24

    _optional: ClassVar[dict[str, str]] = {
        "supports_streaming": "test_stream_ends_with_one_done_chunk_carrying_usage",
        "supports_json": "test_structured_output_matches_the_schema",
        "supports_tools": "test_tool_call_names_an_offered_tool_with_valid_arguments",
        "supports_embeddings": "test_embeddings_have_one_vector_per_text",
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for flag, test_name in cls._optional.items():
            if not getattr(cls, flag):
                setattr(cls, test_name, None)

    def _request(self, text: str = "Say hello.", **kwargs: Any) -> ChatRequest:
        assert self.model, "set the class attribute `model` in your ProviderContract subclass"
        kwargs.setdefault("max_tokens", self.max_tokens)
        return ChatRequest(model=self.model, messages=[Message.user(text)], **kwargs)

    async def test_has_a_name(self, provider: Any) -> None:
        assert isinstance(provider.name, str) and provider.name
        assert "/" not in provider.name, "provider names are the prefix of 'provider/model'"

    async def test_chat_returns_an_assistant_message_with_usage(self, provider: Any) -> None:
        response = await provider.chat(self._request())
        assert isinstance(response, ChatResponse)
        assert response.message.role == "assistant"
        assert response.message.text or response.message.tool_calls
        assert response.usage.input_tokens > 0
        assert response.usage.output_tokens > 0
        assert response.usage.output_tokens <= self.max_tokens + 1

    async def test_stream_ends_with_one_done_chunk_carrying_usage(self, provider: Any) -> None:
        chunks: list[ChatChunk] = [c async for c in provider.stream(self._request())]
        assert chunks, "a stream yields at least its final chunk"
        assert all(isinstance(c, ChatChunk) for c in chunks)
        assert chunks[-1].done and not any(c.done for c in chunks[:-1])
        assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens > 0
        text = "".join(c.delta for c in chunks)
        assert text or chunks[-1].tool_calls

    async def test_list_models_includes_the_model(self, provider: Any) -> None:
        models = await provider.list_models()
        assert all(isinstance(m, ModelInfo) for m in models)
        assert all(m.provider == provider.name for m in models)
        assert self.model in {m.model for m in models}
        for m in models:
            if m.price is not None:
                assert m.price.input_per_mtok >= 0 and m.price.output_per_mtok >= 0

    async def test_unknown_model_raises_a_provider_error(self, provider: Any) -> None:
        request = ChatRequest(model="no-such-model-for-flowyard-contract",
                              messages=[Message.user("hi")], max_tokens=4)
        with pytest.raises(ProviderError) as info:
            await provider.chat(request)
        assert info.value.retriable is False

    async def test_structured_output_matches_the_schema(self, provider: Any) -> None:
        import jsonschema

        schema = {
            "type": "object",
            "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
            "required": ["city", "population"],
            "additionalProperties": False,
        }
        response = await provider.chat(self._request(
            "Give the largest city of France and its population as JSON.",
            response_schema=schema, max_tokens=64))
        jsonschema.validate(json.loads(response.message.text), schema)

    async def test_tool_call_names_an_offered_tool_with_valid_arguments(self, provider: Any
                                                                       ) -> None:
        import jsonschema

        params = {"type": "object", "properties": {"city": {"type": "string"}},
                  "required": ["city"]}
        tool = ToolSpec(name="get_weather", description="Get the weather of a city.",
                        parameters=params)
        response = await provider.chat(self._request(
            "What is the weather in Paris? Use the tool.", tools=[tool],
            tool_choice="required", max_tokens=64))
        assert response.message.tool_calls, "tool_choice='required' must produce a call"
        call = response.message.tool_calls[0]
        assert call.name == "get_weather"
        assert call.id
        jsonschema.validate(call.arguments, params)

    async def test_embeddings_have_one_vector_per_text(self, provider: Any) -> None:
        vectors = await provider.embed(["first text", "second text", "third"],
                                       model=self.embedding_model or self.model)
        assert len(vectors) == 3
        assert len({len(v) for v in vectors}) == 1 and len(vectors[0]) > 0
        assert all(isinstance(x, float) for x in vectors[0])

    async def test_aclose_twice_is_safe(self, provider: Any) -> None:
        await provider.aclose()
        await provider.aclose()


# ============================================================================ tools


class ToolContract:
    """What every :class:`~flowyard.interfaces.Tool` promises.

    Provide fixtures ``tool`` (the tool object), ``valid_arguments`` (a dict that succeeds)
    and ``invalid_arguments`` (a dict that violates the schema). The ``tool_context`` fixture
    of the test kit supplies the context; override it when the tool needs configuration.
    """

    pytestmark = _ANYIO

    async def test_declares_name_description_schema_and_effects(self, tool: Any) -> None:
        import jsonschema

        assert isinstance(tool.name, str) and tool.name and " " not in tool.name
        assert isinstance(tool.description, str) and tool.description.strip()
        jsonschema.Draft202012Validator.check_schema(tool.parameters)
        assert tool.parameters.get("type") == "object"
        assert isinstance(tool.idempotent, bool)
        assert isinstance(tool.side_effects, Sequence) and not isinstance(tool.side_effects, str)
        assert all(isinstance(s, str) for s in tool.side_effects)
        ToolSpec(name=tool.name, description=tool.description, parameters=tool.parameters)

    async def test_valid_arguments_give_a_json_ready_result(
        self, tool: Any, valid_arguments: Mapping[str, Any], tool_context: Any
    ) -> None:
        import jsonschema

        jsonschema.validate(dict(valid_arguments), tool.parameters)
        result = await tool.invoke(dict(valid_arguments), tool_context)
        json.dumps(result)

    async def test_invalid_arguments_raise_tool_input_error(
        self, tool: Any, invalid_arguments: Mapping[str, Any], tool_context: Any
    ) -> None:
        with pytest.raises(ToolInputError):
            await tool.invoke(dict(invalid_arguments), tool_context)



# ============================================================================ storage


class StorageContract:
    """What every :class:`~flowyard.interfaces.StorageBackend` promises.

    Provide a fixture ``storage`` returning an *opened* backend on an empty store. The run
    lease checks (claim, renew, release; a claim refused while a live owner holds the lease,
    allowed once it expired or its owner is named dead) give ``now`` explicitly, so they do
    not depend on the clock. The checks of the optional protocols
    (:class:`~flowyard.interfaces.SupportsIdempotentRuns`,
    :class:`~flowyard.interfaces.SupportsStepCommit`,
    :class:`~flowyard.interfaces.SupportsTaskQueue`,
    :class:`~flowyard.interfaces.SupportsKeyValueListing`,
    :class:`~flowyard.interfaces.SupportsAuditLog`) are skipped for a backend without
    them.
    """

    pytestmark = _ANYIO

    def _run(self, **kwargs: Any) -> RunRecord:
        kwargs.setdefault("id", new_id())
        kwargs.setdefault("workflow_name", "contract")
        return RunRecord(**kwargs)

    async def test_run_round_trips(self, storage: Any) -> None:
        run = self._run(inputs={"q": ["a", {"b": 1.5}]}, workflow={"name": "contract", "steps": []},
                        workflow_hash="ab" * 32, metadata={"k": "v"}, cost_usd=None)
        await storage.create_run(run)
        assert await storage.get_run(run.id) == run

    async def test_update_run_replaces_fields(self, storage: Any) -> None:
        run = self._run()
        await storage.create_run(run)
        run.status = "completed"
        run.outputs = {"answer": [1, 2, 3]}
        run.finished_at = time.time()
        run.input_tokens, run.output_tokens, run.cost_usd = 10, 20, 0.25
        run.resume_count = 2
        await storage.update_run(run)
        assert await storage.get_run(run.id) == run

    async def test_unknown_run_raises(self, storage: Any) -> None:
        with pytest.raises(RunNotFoundError):
            await storage.get_run("no-such-run")
        with pytest.raises(RunNotFoundError):
            await storage.update_run(self._run(id="no-such-run"))

    async def test_list_runs_filters_orders_and_pages(self, storage: Any) -> None:
        base = 1_700_000_000.0
        runs = [
            self._run(workflow_name="alpha" if i % 2 else "beta",
                      status="completed" if i < 4 else "failed", created_at=base + i)
            for i in range(6)
        ]
        for run in runs:
            await storage.create_run(run)
        newest = await storage.list_runs(RunQuery(limit=10))
        assert [r.id for r in newest] == [r.id for r in reversed(runs)]
        oldest = await storage.list_runs(RunQuery(order="created_at", limit=2, offset=1))
        assert [r.id for r in oldest] == [runs[1].id, runs[2].id]
        failed = await storage.list_runs(RunQuery(status="failed"))
        assert {r.id for r in failed} == {runs[4].id, runs[5].id}
        alpha = await storage.list_runs(RunQuery(workflow_name="alpha", status="completed"))
        assert {r.id for r in alpha} == {runs[1].id, runs[3].id}
        window = await storage.list_runs(RunQuery(created_after=base + 2, created_before=base + 4))
        assert {r.id for r in window} == {runs[2].id, runs[3].id}

    async def test_list_runs_treats_filter_values_as_data(self, storage: Any) -> None:
        await storage.create_run(self._run(workflow_name="safe"))
        hostile = "x' OR '1'='1"
        assert await storage.list_runs(RunQuery(workflow_name=hostile)) == []
        assert await storage.list_runs(RunQuery(status=hostile)) == []

    async def test_attempts_upsert_by_key_and_attempt(self, storage: Any) -> None:
        run = self._run()
        await storage.create_run(run)
        first = StepAttempt(run_id=run.id, step_id="a", step_key="a", attempt=1,
                            idempotency_key="k1", started_at=1.0)
        await storage.save_attempt(first)
        first.status, first.error, first.error_type = "failed", "boom", "ToolError"
        first.finished_at = 2.0
        await storage.save_attempt(first)
        second = StepAttempt(run_id=run.id, step_id="a", step_key="a", attempt=2,
                             idempotency_key="k1", started_at=3.0, status="completed",
                             output={"n": [1, None, "x"]}, cost_usd=None)
        await storage.save_attempt(second)
        fan = StepAttempt(run_id=run.id, step_id="b", step_key="b[0]", attempt=1,
                          started_at=4.0)
        await storage.save_attempt(fan)
        assert await storage.list_attempts(run.id) == [first, second, fan]

    async def test_checkpoints_hold_json_outputs(self, storage: Any) -> None:
        run = self._run()
        await storage.create_run(run)
        await storage.save_checkpoint(run.id, "a", {"text": "ünïcode ✓", "n": [1, 2.5, None]})
        await storage.save_checkpoint(run.id, "b[3]", "plain")
        await storage.save_checkpoint(run.id, "c", None)
        assert await storage.load_checkpoints(run.id) == {
            "a": {"text": "ünïcode ✓", "n": [1, 2.5, None]}, "b[3]": "plain", "c": None}
        assert await storage.load_checkpoints("other-run") == {}

    async def test_events_append_in_order_and_page_by_seq(self, storage: Any) -> None:
        run = self._run()
        await storage.create_run(run)
        events = [Event(type="step.completed", run_id=run.id, step_id=f"s{i}",
                        data={"i": i, "nested": {"x": [i]}}, time=100.0 + i, seq=i + 1)
                  for i in range(25)]
        await storage.append_events(events[:10])
        await storage.append_events(events[10:])
        assert await storage.list_events(run.id) == events
        assert await storage.list_events(run.id, after_seq=20) == events[20:]
        assert await storage.list_events(run.id, after_seq=3, limit=2) == events[3:5]

    async def test_logs_and_costs(self, storage: Any) -> None:
        run = self._run()
        await storage.create_run(run)
        logs = [LogRecord(run_id=run.id, message=f"line {i}", level="info", step_id="s",
                          time=10.0 + i) for i in range(3)]
        for record in logs:
            await storage.append_log(record)
        assert await storage.list_logs(run.id) == logs
        known = CostLine(run_id=run.id, provider="fake", model="priced", input_tokens=10,
                         output_tokens=5, cost_usd=0.00002, step_id="s", agent="a",
                         workflow_name="contract", time=1.0)
        unknown = CostLine(run_id=run.id, provider="fake", model="unpriced", input_tokens=1,
                           output_tokens=1, cost_usd=None, time=2.0)
        await storage.add_cost(known)
        await storage.add_cost(unknown)
        assert await storage.list_costs(run.id) == [known, unknown]
        assert unknown in await storage.list_costs()

    async def test_key_value_area(self, storage: Any) -> None:
        assert await storage.kv_get("plugin", "missing") is None
        await storage.kv_set("plugin", "k", {"a": [1, 2]})
        await storage.kv_set("other", "k", 3)
        assert await storage.kv_get("plugin", "k") == {"a": [1, 2]}
        await storage.kv_set("plugin", "k", "replaced")
        assert await storage.kv_get("plugin", "k") == "replaced"
        await storage.kv_delete("plugin", "k")
        await storage.kv_delete("plugin", "k")
        assert await storage.kv_get("plugin", "k") is None
        assert await storage.kv_get("other", "k") == 3

    @staticmethod
    def _lease(run_id: str, *, owner: str | None = None, at: float = 1_700_000_000.0,
               timeout: float = 30.0, pid: int = 4242) -> RunLease:
        return RunLease(run_id=run_id, owner=owner or new_id(), host="host-a", pid=pid,
                        host_id="boot/pidns", process_start="12345", acquired_at=at,
                        heartbeat_at=at, expires_at=at + timeout)

    async def test_lease_claim_renew_release(self, storage: Any) -> None:
        run = self._run(status="running")
        await storage.create_run(run)
        assert await storage.get_leases([run.id]) == {}
        lease = self._lease(run.id)
        t = lease.acquired_at
        assert await storage.claim_lease(lease, now=t) == lease
        assert await storage.get_leases([run.id, "no-such-run"]) == {run.id: lease}
        # the holder claims again (idempotent) and renews: one heartbeat moves both times
        assert await storage.claim_lease(lease, now=t + 1) == lease
        assert await storage.renew_lease(run.id, lease.owner, heartbeat_at=t + 5,
                                         expires_at=t + 35) is True
        stored = (await storage.get_leases([run.id]))[run.id]
        assert (stored.owner, stored.heartbeat_at, stored.expires_at) == (lease.owner, t + 5,
                                                                          t + 35)
        assert (stored.host, stored.pid, stored.host_id, stored.process_start,
                stored.acquired_at) == ("host-a", 4242, "boot/pidns", "12345", t)
        # update_run never touches the lease
        run.status = "completed"
        await storage.update_run(run)
        assert (await storage.get_leases([run.id]))[run.id] == stored
        # only the owner renews or releases
        assert await storage.renew_lease(run.id, "someone-else", heartbeat_at=t + 9,
                                         expires_at=t + 39) is False
        assert await storage.release_lease(run.id, "someone-else") is False
        assert await storage.release_lease(run.id, lease.owner) is True
        assert await storage.get_leases([run.id]) == {}
        assert await storage.release_lease(run.id, lease.owner) is False
        assert await storage.renew_lease(run.id, lease.owner, heartbeat_at=t + 9,
                                         expires_at=t + 39) is False
        # a released run can be claimed by anyone
        other = self._lease(run.id, at=t + 10)
        assert await storage.claim_lease(other, now=t + 10) == other

    async def test_lease_claim_is_refused_while_a_live_owner_holds_it(self, storage: Any
                                                                      ) -> None:
        run = self._run(status="running")
        await storage.create_run(run)
        first = self._lease(run.id, timeout=30)
        t = first.acquired_at
        assert await storage.claim_lease(first, now=t) == first
        second = self._lease(run.id, at=t + 29, pid=5151)
        assert await storage.claim_lease(second, now=t + 29) == first  # refused: the holder
        assert (await storage.get_leases([run.id]))[run.id].owner == first.owner
        # a renewal keeps it alive past its first expiry
        assert await storage.renew_lease(run.id, first.owner, heartbeat_at=t + 20,
                                         expires_at=t + 50)
        assert (await storage.claim_lease(second, now=t + 45)).owner == first.owner
        # naming another owner as dead does not help
        third = self._lease(run.id, at=t + 45)
        assert (await storage.claim_lease(third, now=t + 45, replace_owner=second.owner)
                ).owner == first.owner

    async def test_lease_can_be_claimed_once_expired_or_its_owner_is_dead(self, storage: Any
                                                                          ) -> None:
        run = self._run(status="running")
        await storage.create_run(run)
        first = self._lease(run.id, timeout=30)
        t = first.acquired_at
        await storage.claim_lease(first, now=t)
        after_expiry = self._lease(run.id, at=t + 30)
        assert await storage.claim_lease(after_expiry, now=t + 30) == after_expiry
        # the old owner has lost it: it can neither renew nor release it
        assert await storage.renew_lease(run.id, first.owner, heartbeat_at=t + 31,
                                         expires_at=t + 61) is False
        assert await storage.release_lease(run.id, first.owner) is False
        # an owner found dead (its pid is gone) is replaced before its lease expires
        replacing = self._lease(run.id, at=t + 31)
        assert await storage.claim_lease(replacing, now=t + 31,
                                         replace_owner=after_expiry.owner) == replacing
        assert (await storage.get_leases([run.id]))[run.id] == replacing

    async def test_concurrent_claims_have_one_winner(self, storage: Any) -> None:
        import anyio

        run = self._run(status="running")
        await storage.create_run(run)
        t = 1_700_000_000.0
        stale = self._lease(run.id, at=t - 100)  # expired: every claimer may take it over
        await storage.claim_lease(stale, now=t - 100)
        claims = [self._lease(run.id, at=t, pid=1000 + i) for i in range(8)]
        answers: list[RunLease] = []

        async def claim(lease: RunLease) -> None:
            answers.append(await storage.claim_lease(lease, now=t, replace_owner=stale.owner))

        async with anyio.create_task_group() as tg:
            for lease in claims:
                tg.start_soon(claim, lease)
        stored = (await storage.get_leases([run.id]))[run.id]
        assert stored.owner in {c.owner for c in claims}
        assert [a.owner for a in answers] == [stored.owner] * len(claims)

    async def test_lease_of_an_unknown_run_raises(self, storage: Any) -> None:
        with pytest.raises(RunNotFoundError):
            await storage.claim_lease(self._lease("no-such-run"), now=1_700_000_000.0)
        assert await storage.get_leases([]) == {}

    async def test_create_run_once_keeps_one_run_per_idempotency_key(self, storage: Any
                                                                      ) -> None:
        """Checked on backends implementing :class:`~flowyard.interfaces.SupportsIdempotentRuns`."""
        if not isinstance(storage, SupportsIdempotentRuns):
            pytest.skip("the backend does not implement SupportsIdempotentRuns")
        first = self._run(inputs={"q": 1}, metadata={"m": "first"})
        stored, created = await storage.create_run_once(first, "key-1")
        assert created and stored == first
        second = self._run(inputs={"q": 2})
        stored, created = await storage.create_run_once(second, "key-1")
        assert not created and stored == first  # the existing run, the new one not stored
        with pytest.raises(RunNotFoundError):
            await storage.get_run(second.id)
        other, created = await storage.create_run_once(self._run(), "key-2")
        assert created and other.id != first.id
        plain = self._run()
        await storage.create_run(plain)  # runs without a key do not collide with each other
        await storage.create_run(self._run())
        with pytest.raises(StorageError):  # an existing id under a new key is still refused
            await storage.create_run_once(self._run(id=plain.id), "key-3")
        first.status = "completed"
        await storage.update_run(first)  # update_run keeps the key
        stored, created = await storage.create_run_once(self._run(), "key-1")
        assert not created and stored.id == first.id and stored.status == "completed"

    async def test_concurrent_create_run_once_has_one_winner(self, storage: Any) -> None:
        import anyio

        if not isinstance(storage, SupportsIdempotentRuns):
            pytest.skip("the backend does not implement SupportsIdempotentRuns")
        candidates = [self._run() for _ in range(6)]
        answers: list[tuple[RunRecord, bool]] = []

        async def submit(run: RunRecord) -> None:
            answers.append(await storage.create_run_once(run, "shared-key"))

        async with anyio.create_task_group() as tg:
            for run in candidates:
                tg.start_soon(submit, run)
        winners = [run for run, created in answers if created]
        assert len(winners) == 1
        assert {run.id for run, _ in answers} == {winners[0].id}

    # -- SupportsStepCommit (skipped for backends without it)

    def _step_records(self, run_id: str, *, first_seq: int, count: int, step_key: str = "a",
                      logs: int = 1) -> tuple[list[Event], list[LogRecord]]:
        events = [Event(type="step.progress.stored", run_id=run_id, step_id="a",
                        data={"n": first_seq + i, "text": "ünï ✓"}, time=200.0 + first_seq + i,
                        seq=first_seq + i) for i in range(count)]
        lines = [LogRecord(run_id=run_id, message=f"{step_key} line {i}", level="info",
                           step_id="a", time=300.0 + first_seq + i) for i in range(logs)]
        return events, lines

    async def test_commit_step_writes_attempt_checkpoint_events_and_logs(self, storage: Any
                                                                         ) -> None:
        """Checked on backends implementing :class:`~flowyard.interfaces.SupportsStepCommit`:
        a step key's start (attempt running + events) and end (attempt completed +
        checkpoint + events + logs) read back through the plain reading methods.
        """
        if not isinstance(storage, SupportsStepCommit):
            pytest.skip("the backend does not implement SupportsStepCommit")
        run = self._run(status="running")
        await storage.create_run(run)
        attempt = StepAttempt(run_id=run.id, step_id="a", step_key="a", attempt=1,
                              idempotency_key="k-a", started_at=10.0)
        start_events, _ = self._step_records(run.id, first_seq=1, count=2, logs=0)
        await storage.commit_step(run.id, attempt=attempt, events=start_events)
        assert await storage.list_attempts(run.id) == [attempt]
        assert await storage.load_checkpoints(run.id) == {}
        assert await storage.list_events(run.id) == start_events
        assert await storage.list_logs(run.id) == []

        attempt.status, attempt.finished_at = "completed", 11.0
        attempt.output = {"answer": [1, 2.5, None, "ünï"]}
        attempt.input_tokens, attempt.output_tokens, attempt.cost_usd = 7, 3, None
        end_events, lines = self._step_records(run.id, first_seq=3, count=3, logs=2)
        await storage.commit_step(run.id, attempt=attempt, checkpoint=("a", attempt.output),
                                  events=end_events, logs=lines)
        assert await storage.list_attempts(run.id) == [attempt]
        assert await storage.load_checkpoints(run.id) == {"a": attempt.output}
        assert await storage.list_events(run.id) == start_events + end_events
        assert await storage.list_events(run.id, after_seq=2, limit=2) == end_events[:2]
        assert await storage.list_logs(run.id) == lines
        # every argument is optional; a call with none writes nothing
        await storage.commit_step(run.id)
        await storage.commit_step(run.id, checkpoint=("b[0]", None))
        assert await storage.load_checkpoints(run.id) == {"a": attempt.output, "b[0]": None}
        assert await storage.list_attempts("other-run") == []

    @pytest.mark.parametrize("bad", ["checkpoint", "attempt output"])
    async def test_commit_step_is_all_or_nothing(self, storage: Any, bad: str) -> None:
        """A checkpoint or attempt output that is not JSON-ready (an ``object()``) raises
        StorageError naming the run; none of the call's records is stored, its events and
        log lines included.
        """
        if not isinstance(storage, SupportsStepCommit):
            pytest.skip("the backend does not implement SupportsStepCommit")
        run = self._run(status="running")
        await storage.create_run(run)
        started = StepAttempt(run_id=run.id, step_id="a", step_key="a", attempt=1,
                              idempotency_key="k-a", started_at=10.0)
        start_events, _ = self._step_records(run.id, first_seq=1, count=1, logs=0)
        await storage.commit_step(run.id, attempt=started, events=start_events)

        finished = StepAttempt(run_id=run.id, step_id="a", step_key="a", attempt=1,
                               idempotency_key="k-a", started_at=10.0, status="completed",
                               finished_at=11.0, output={"ok": True})
        output: Any = {"ok": True}
        end_events, lines = self._step_records(run.id, first_seq=2, count=2, logs=2)
        if bad == "checkpoint":
            output = {"ok": object()}
        else:
            finished.output = {"ok": object()}
        with pytest.raises(StorageError) as info:
            await storage.commit_step(run.id, attempt=finished, checkpoint=("a", output),
                                      events=end_events, logs=lines)
        assert run.id in str(info.value)
        assert await storage.list_attempts(run.id) == [started]
        assert await storage.load_checkpoints(run.id) == {}
        assert await storage.list_events(run.id) == start_events
        assert await storage.list_logs(run.id) == []

    async def test_a_retried_commit_step_stores_each_event_once(self, storage: Any) -> None:
        """A call repeated (its commit went through, its answer was lost) leaves each
        ``(run_id, seq)`` stored once and the attempt and checkpoint as one row each.
        """
        if not isinstance(storage, SupportsStepCommit):
            pytest.skip("the backend does not implement SupportsStepCommit")
        run = self._run(status="running")
        await storage.create_run(run)
        attempt = StepAttempt(run_id=run.id, step_id="a", step_key="a", attempt=1,
                              status="completed", started_at=10.0, finished_at=11.0,
                              output="done")
        events, _ = self._step_records(run.id, first_seq=1, count=4, logs=0)
        for _ in range(2):  # the first call's commit went through, its answer was lost
            await storage.commit_step(run.id, attempt=attempt, checkpoint=("a", "done"),
                                      events=events)
        assert await storage.list_events(run.id) == events
        assert await storage.list_attempts(run.id) == [attempt]
        assert await storage.load_checkpoints(run.id) == {"a": "done"}
        # a retry that also carries newer events stores only those
        more, _ = self._step_records(run.id, first_seq=5, count=2, logs=0)
        await storage.commit_step(run.id, events=events[2:] + more)
        assert [e.seq for e in await storage.list_events(run.id)] == [1, 2, 3, 4, 5, 6]

    async def test_append_events_skips_an_already_stored_seq(self, storage: Any) -> None:
        """An event whose ``(run_id, seq)`` is stored is not stored again; the stored one is
        kept. Checked with :class:`~flowyard.interfaces.SupportsStepCommit`, whose backends
        promise it for every event write.
        """
        if not isinstance(storage, SupportsStepCommit):
            pytest.skip("the backend does not implement SupportsStepCommit")
        run, other = self._run(), self._run()
        await storage.create_run(run)
        await storage.create_run(other)
        events, _ = self._step_records(run.id, first_seq=1, count=3, logs=0)
        await storage.append_events(events)
        again = Event(type="changed", run_id=run.id, step_id="z", data={"v": 2}, time=9.0,
                      seq=2)
        newer, _ = self._step_records(run.id, first_seq=4, count=1, logs=0)
        await storage.append_events([again, events[2], *newer])
        await storage.append_events(events)
        assert await storage.list_events(run.id) == events + newer
        # the same seq in another run is another event
        elsewhere = Event(type="x", run_id=other.id, data={}, time=1.0, seq=2)
        await storage.append_events([elsewhere])
        assert await storage.list_events(other.id) == [elsewhere]

    async def test_returned_objects_are_copies(self, storage: Any) -> None:
        run = self._run(outputs={"list": [1]})
        await storage.create_run(run)
        run.outputs["list"].append(2)
        fetched = await storage.get_run(run.id)
        assert fetched.outputs == {"list": [1]}
        fetched.outputs["list"].append(3)
        assert (await storage.get_run(run.id)).outputs == {"list": [1]}


    # ------------------------------------------------------------------ task queue

    def _queue(self, storage: Any) -> Any:
        if not isinstance(storage, SupportsTaskQueue):
            pytest.skip("the backend does not implement SupportsTaskQueue")
        return storage

    @staticmethod
    def _task(**kwargs: Any) -> TaskRecord:
        kwargs.setdefault("id", new_id())
        kwargs.setdefault("tenant", "tenant-a")
        kwargs.setdefault("kind", "workflow")
        kwargs.setdefault("target", "contract")
        return TaskRecord(**kwargs)

    async def test_tasks_round_trip_and_list_per_tenant(self, storage: Any) -> None:
        """Checked on backends implementing :class:`~flowyard.interfaces.SupportsTaskQueue`."""
        queue = self._queue(storage)
        first = self._task(inputs={"q": ["x", {"y": 1.5}]}, name="first", priority=3,
                           metadata={"m": 1}, created_at=1_700_000_000.0)
        stored, created = await queue.submit_task(first)
        assert created and stored == first
        assert await queue.get_task(first.id) == first
        second = self._task(kind="agent", target="agent-1", created_at=1_700_000_001.0)
        other = self._task(tenant="tenant-b", created_at=1_700_000_002.0)
        for task in (second, other):
            await queue.submit_task(task)
        listed = await queue.list_tasks(TaskQuery(tenant="tenant-a"))
        assert [t.id for t in listed] == [second.id, first.id]  # newest first, own tenant
        assert [t.id for t in await queue.list_tasks(TaskQuery(tenant="tenant-a",
                                                                kind="agent"))] == [second.id]
        assert [t.id for t in await queue.list_tasks(TaskQuery(tenant="tenant-a", limit=1,
                                                                offset=1))] == [first.id]
        assert [t.id for t in await queue.list_tasks(TaskQuery(tenant="tenant-b"))] == [
            other.id]
        with pytest.raises(TaskNotFoundError):
            await queue.get_task("no-such-task")
        fetched = await queue.get_task(first.id)
        fetched.inputs["q"].append("changed")
        assert (await queue.get_task(first.id)).inputs == {"q": ["x", {"y": 1.5}]}

    async def test_an_idempotency_key_names_one_task_per_tenant(self, storage: Any) -> None:
        queue = self._queue(storage)
        first = self._task(idempotency_key="k", request_hash="h1")
        assert (await queue.submit_task(first))[1]
        again, created = await queue.submit_task(self._task(idempotency_key="k",
                                                            request_hash="h2"))
        assert not created and again.id == first.id and again.request_hash == "h1"
        elsewhere, created = await queue.submit_task(self._task(tenant="tenant-b",
                                                                idempotency_key="k"))
        assert created and elsewhere.id != first.id

    async def test_claims_follow_priority_then_age_and_expired_leases(self, storage: Any
                                                                      ) -> None:
        queue = self._queue(storage)
        now = 1_700_000_000.0
        low = self._task(priority=0, created_at=now - 30)
        high_old = self._task(priority=5, created_at=now - 20)
        high_new = self._task(priority=5, created_at=now - 10)
        for task in (high_new, low, high_old):
            await queue.submit_task(task)
        order = []
        for worker in ("w1", "w2", "w3"):
            claimed = await queue.claim_task(worker, now=now, lease_timeout=30.0)
            assert claimed is not None and claimed.status == "running"
            assert claimed.worker == worker and claimed.attempts == 1
            assert claimed.lease_expires_at == now + 30.0 and claimed.started_at == now
            order.append(claimed.id)
        assert order == [high_old.id, high_new.id, low.id]
        assert await queue.claim_task("w4", now=now + 1, lease_timeout=30.0) is None
        # w2 keeps its lease, w1 and w3 stop renewing: their tasks are claimed again, same run
        assert await queue.renew_task(high_new.id, "w2", now=now + 20, lease_timeout=30.0)
        assert await queue.renew_task(high_new.id, "w1", now=now + 20,
                                      lease_timeout=30.0) is None
        taken = await queue.claim_task("w5", now=now + 31, lease_timeout=30.0)
        assert taken is not None and taken.id == high_old.id and taken.attempts == 2
        assert taken.run_id == high_old.run_id and taken.started_at == now
        assert await queue.renew_task(high_old.id, "w1", now=now + 32,
                                      lease_timeout=30.0) is None  # w1 lost it
        assert not await queue.finish_task(high_old.id, "w1", status="completed", now=now)
        assert await queue.finish_task(high_old.id, "w5", status="completed",
                                       outputs={"answer": [1, 2]}, now=now + 33)
        done = await queue.get_task(high_old.id)
        assert done.status == "completed" and done.outputs == {"answer": [1, 2]}
        assert done.worker is None and done.finished_at == now + 33

    async def test_concurrent_claims_take_each_task_once(self, storage: Any) -> None:
        queue = self._queue(storage)
        tasks = [self._task() for _ in range(12)]
        for task in tasks:
            await queue.submit_task(task)
        claimed: list[str] = []

        async def worker(name: str) -> None:
            while True:
                task = await queue.claim_task(name, now=1_700_000_000.0, lease_timeout=60.0)
                if task is None:
                    return
                claimed.append(task.id)

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(worker, f"w{i}")
        assert sorted(claimed) == sorted(t.id for t in tasks)

    async def test_cancel_and_retry(self, storage: Any) -> None:
        queue = self._queue(storage)
        now = 1_700_000_000.0
        queued, running = self._task(), self._task(priority=9)
        for task in (queued, running):
            await queue.submit_task(task)
        assert (await queue.claim_task("w", now=now, lease_timeout=30.0)).id == running.id
        cancelled = await queue.cancel_task(queued.id, now=now)
        assert cancelled.status == "cancelled" and cancelled.finished_at == now
        asked = await queue.cancel_task(running.id, now=now)
        assert asked.status == "running" and asked.cancel_requested
        renewed = await queue.renew_task(running.id, "w", now=now + 1, lease_timeout=30.0)
        assert renewed is not None and renewed.cancel_requested
        assert await queue.finish_task(running.id, "w", status="cancelled", error="stopped",
                                       now=now + 2)
        again = await queue.retry_task(running.id)
        assert again.status == "queued" and not again.cancel_requested
        assert again.run_id == running.run_id and again.error is None
        retaken = await queue.claim_task("w2", now=now + 3, lease_timeout=30.0)
        assert retaken is not None and retaken.id == running.id and retaken.attempts == 2
        assert (await queue.retry_task(running.id)).status == "running"  # not ended: unchanged
        with pytest.raises(TaskNotFoundError):
            await queue.cancel_task("no-such-task", now=now)

    async def test_kv_list_pages_in_key_order(self, storage: Any) -> None:
        """Checked on backends implementing
        :class:`~flowyard.interfaces.SupportsKeyValueListing`.
        """
        if not isinstance(storage, SupportsKeyValueListing):
            pytest.skip("the backend does not implement SupportsKeyValueListing")
        for key in ("b", "a", "c", "d"):
            await storage.kv_set("contract.list", key, {"k": key})
        await storage.kv_set("contract.other", "a0", 1)
        first = await storage.kv_list("contract.list", limit=3)
        assert first == [("a", {"k": "a"}), ("b", {"k": "b"}), ("c", {"k": "c"})]
        assert await storage.kv_list("contract.list", after="c") == [("d", {"k": "d"})]
        assert await storage.kv_list("contract.empty") == []

    # ------------------------------------------------------------------ audit log

    @staticmethod
    def _audit(storage: Any) -> Any:
        if not isinstance(storage, SupportsAuditLog):
            pytest.skip("the backend does not implement SupportsAuditLog")
        return storage

    async def test_audit_appends_chain_from_the_genesis(self, storage: Any) -> None:
        """Checked on backends implementing :class:`~flowyard.interfaces.SupportsAuditLog`."""
        log = self._audit(storage)
        assert await log.audit_head() is None and await log.list_audit() == []
        first = AuditRecord(action="tool.call", actor="user:alice", resource="echo",
                            time=1_700_000_000.125, run_id="r1", step_id="s",
                            details={"tool": "echo", "n": [1, 2.5, "x"]}, seq=99, hash="junk")
        stored = await log.append_audit([first])
        assert [r.seq for r in stored] == [1] and stored[0].prev_hash == GENESIS_HASH
        assert stored[0].hash == hash_audit(stored[0]) and stored[0].details == first.details
        more = await log.append_audit([AuditRecord(action=f"a{i}", actor="api_key:k",
                                                   tenant="t", outcome="denied")
                                       for i in range(4)])
        assert [r.seq for r in more] == [2, 3, 4, 5]
        assert [r.prev_hash for r in more] == [stored[0].hash, *(r.hash for r in more[:3])]
        assert await log.append_audit([]) == []
        listed = await log.list_audit()
        assert listed == [*stored, *more]
        assert await log.list_audit(after_seq=2, limit=2) == more[1:3]
        assert await log.get_audit(3) == more[1] and await log.get_audit(6) is None
        assert await log.audit_head() == more[-1]
        result = await verify_audit(log, page=2)
        assert result.ok and result.checked == 5 and result.head_seq == 5
        assert result.head_hash == more[-1].hash

    async def test_audit_refuses_records_that_are_not_json_ready(self, storage: Any) -> None:
        log = self._audit(storage)
        with pytest.raises(StorageError):
            await log.append_audit([AuditRecord(action="ok", actor="u"),
                                    AuditRecord(action="bad", actor="u",
                                                details={"x": object()})])
        assert await log.list_audit() == []  # all or none

    async def test_audit_concurrent_appends_never_fork(self, storage: Any) -> None:
        log = self._audit(storage)

        async def writer(name: str) -> None:
            for i in range(10):
                await log.append_audit([AuditRecord(action="x", actor=name,
                                                    details={"i": i})])

        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(writer, f"user:w{n}")
        result = await verify_audit(log)
        assert result.ok and result.checked == 40, result


# ============================================================================ memory


class MemoryContract:
    """What every :class:`~flowyard.interfaces.MemoryStore` promises.

    Provide a fixture ``memory_store`` returning an empty store. Texts in these checks share
    words with their queries, so any reasonable embedding ranks them first.
    """

    pytestmark = _ANYIO

    facts: ClassVar[list[str]] = [
        "The deploy script for the billing service lives in ops/deploy_billing.sh.",
        "Alice prefers answers formatted as short bullet lists.",
        "The staging database is refreshed from production every Sunday night.",
        "Python 3.12 removed the distutils module from the standard library.",
    ]

    async def test_add_then_search_finds_the_closest_entry_first(self, memory_store: Any) -> None:
        ids = await memory_store.add([MemoryEntry(text=t, namespace="ns1") for t in self.facts])
        assert len(ids) == len(self.facts) and len(set(ids)) == len(ids)
        hits = await memory_store.search("Which module did Python 3.12 remove from the "
                                         "standard library?", namespace="ns1", top_k=2)
        assert 1 <= len(hits) <= 2
        assert hits[0].entry.text == self.facts[3]
        assert hits[0].entry.id == ids[3]
        assert all(hits[i].score >= hits[i + 1].score for i in range(len(hits) - 1))

    async def test_namespaces_are_isolated(self, memory_store: Any) -> None:
        await memory_store.add([MemoryEntry(text=self.facts[0], namespace="agent-a")])
        await memory_store.add([MemoryEntry(text=self.facts[1], namespace="agent-b")])
        hits = await memory_store.search("deploy script billing", namespace="agent-b", top_k=5)
        assert [h.entry.text for h in hits] == [self.facts[1]]

    async def test_metadata_filters_and_min_score(self, memory_store: Any) -> None:
        await memory_store.add([
            MemoryEntry(text=self.facts[0], category="ops", metadata={"team": "billing"}),
            MemoryEntry(text=self.facts[2], category="ops", metadata={"team": "data"}),
            MemoryEntry(text=self.facts[1], category="preference", metadata={"team": "billing"}),
        ])
        hits = await memory_store.search("database refresh", top_k=5,
                                         filters={"team": "data"})
        assert [h.entry.text for h in hits] == [self.facts[2]]
        hits = await memory_store.search("answers", top_k=5, filters={"category": "preference"})
        assert [h.entry.text for h in hits] == [self.facts[1]]
        assert await memory_store.search("database refresh", top_k=5, min_score=1.01) == []
        entry = (await memory_store.search("billing deploy", top_k=1))[0].entry
        assert entry.metadata.get("team") == "billing"

    async def test_delete(self, memory_store: Any) -> None:
        ids = await memory_store.add([MemoryEntry(text=t) for t in self.facts[:2]])
        assert await memory_store.delete([ids[0]]) == 1
        hits = await memory_store.search("deploy script billing service", top_k=5)
        assert ids[0] not in {h.entry.id for h in hits}
        assert ids[1] in {h.entry.id for h in hits}

    async def test_cleanup_removes_old_entries_only(self, memory_store: Any) -> None:
        old = MemoryEntry(text=self.facts[0], created_at=time.time() - 40 * 86400)
        fresh = MemoryEntry(text=self.facts[1])
        await memory_store.add([old, fresh])
        assert await memory_store.cleanup(older_than_days=30) == 1
        hits = await memory_store.search("deploy script answers bullet lists", top_k=5)
        assert {h.entry.id for h in hits} == {fresh.id}

    async def test_consolidate_merges_near_duplicates(self, memory_store: Any) -> None:
        text = self.facts[2]
        await memory_store.add([MemoryEntry(text=text), MemoryEntry(text=text),
                                MemoryEntry(text=self.facts[3])])
        removed = await memory_store.consolidate(threshold=0.95)
        assert removed == 1
        hits = await memory_store.search("staging database refreshed", top_k=5)
        assert [h.entry.text for h in hits].count(text) == 1


# ============================================================================ retrievers


class RetrieverContract:
    """What every :class:`~flowyard.interfaces.Retriever` promises.

    Provide a fixture ``retriever`` returning an empty retriever.
    """

    pytestmark = _ANYIO

    documents: ClassVar[list[Document]] = [
        Document(id="tea", source="tea.md", text=(
            "Green tea is brewed with water below boiling, around 80 degrees Celsius, for two "
            "to three minutes. Black tea takes boiling water and four minutes.")),
        Document(id="bikes", source="bikes.md", text=(
            "A bicycle chain should be cleaned and lubricated every few hundred kilometres. "
            "Check tyre pressure weekly.")),
        Document(id="git", source="git.md", text=(
            "git rebase rewrites commits onto a new base; git merge records a merge commit "
            "that joins two histories.")),
    ]

    async def test_index_then_search_returns_the_relevant_chunk_first(self, retriever: Any
                                                                      ) -> None:
        counts = await retriever.index(self.documents)
        assert counts["added"] == 3 and counts["chunks"] >= 3
        chunks = await retriever.search("How hot should the water be for green tea?", top_k=2)
        assert chunks and chunks[0].document_id == "tea"
        assert chunks[0].source == "tea.md" and "tea" in chunks[0].text.lower()

    async def test_reindexing_is_idempotent_and_changes_replace_chunks(self, retriever: Any
                                                                       ) -> None:
        await retriever.index(self.documents)
        again = await retriever.index(self.documents)
        assert again["unchanged"] == 3 and again["added"] == 0 and again["updated"] == 0
        changed = Document(id="git", source="git.md",
                           text="git bisect finds the commit that introduced a bug by binary "
                                "search over history.")
        result = await retriever.index([changed])
        assert result["updated"] == 1
        chunks = await retriever.search("which git command uses binary search to find a bug",
                                        top_k=5)
        git_chunks = [c for c in chunks if c.document_id == "git"]
        assert git_chunks and all("rebase" not in c.text for c in git_chunks)

    async def test_get_context_respects_the_token_budget(self, retriever: Any) -> None:
        await retriever.index(self.documents)
        wide = await retriever.get_context("tea bicycle git", top_k=3, max_tokens=2000)
        narrow = await retriever.get_context("tea bicycle git", top_k=3, max_tokens=40)
        assert len(wide) >= 2
        assert 1 <= len(narrow) <= len(wide)
        assert all(c.source for c in wide)

    async def test_collections_are_isolated(self, retriever: Any) -> None:
        await retriever.index(self.documents[:1], collection="one")
        await retriever.index(self.documents[1:2], collection="two")
        chunks = await retriever.search("green tea water", top_k=5, collection="two")
        assert all(c.document_id == "bikes" for c in chunks)



# ============================================================================ routers


def _model(name: str, *, caps: Sequence[str], context: int, price: float | None) -> ModelInfo:
    return ModelInfo(provider="contract", model=name, context_window=context,
                     capabilities=frozenset({"chat", *caps}),
                     price=None if price is None else ModelPrice(price, price * 2))


class RouterContract:
    """What every :class:`~flowyard.interfaces.Router` promises.

    Provide a fixture ``router``. Every request in these checks lists its ``candidates`` (in
    order), so routers that need an explicit order (like ``fallback``) apply too.
    """

    pytestmark = _ANYIO

    models: ClassVar[list[ModelInfo]] = [
        _model("big-tools", caps=["tools", "json"], context=8192, price=1.0),
        _model("small-plain", caps=[], context=8192, price=0.1),
        _model("short-tools", caps=["tools"], context=2048, price=0.5),
    ]

    def _route(self, **kwargs: Any) -> Any:
        kwargs.setdefault("candidates", [m.ref for m in self.models])
        return RouteRequest(**kwargs)

    async def test_choices_meet_the_requirements(self, router: Any) -> None:
        chosen = await router.choose(self._route(capabilities=["tools"], min_context=4096),
                                     self.models)
        assert [m.ref for m in chosen] == ["contract/big-tools"]

    async def test_choices_are_distinct_offered_models(self, router: Any) -> None:
        chosen = await router.choose(self._route(), self.models)
        assert chosen, "a request every model meets must get a choice"
        refs = [m.ref for m in chosen]
        assert len(refs) == len(set(refs))
        assert set(refs) <= {m.ref for m in self.models}

    async def test_price_cap_and_candidates_are_respected(self, router: Any) -> None:
        cheap = await router.choose(self._route(max_input_price=0.6), self.models)
        assert cheap and all(m.price is not None and m.price.input_per_mtok <= 0.6
                             for m in cheap)
        only = await router.choose(self._route(candidates=["contract/small-plain"]),
                                   self.models)
        assert [m.ref for m in only] == ["contract/small-plain"]

    async def test_no_fitting_model_raises_unknown_name_error(self, router: Any) -> None:
        with pytest.raises(UnknownNameError):
            await router.choose(self._route(capabilities=["vision"]), self.models)

    async def test_outcomes_are_accepted(self, router: Any) -> None:
        router.record_outcome(self.models[0], success=True, cost_usd=0.002, latency_s=0.4)
        router.record_outcome(self.models[1], success=False, cost_usd=None, latency_s=1.5)
        assert await router.choose(self._route(), self.models)


# ============================================================================ executors


class ContractActionError(Exception):
    """The error the executor contract's failing action raises (module-level, so that an
    executor that pickles actions to another process can send it back unchanged).
    """


async def _contract_result(value: Any) -> Any:
    return value


async def _contract_fail(message: str) -> None:
    raise ContractActionError(message)


async def _contract_count(folder: str, value: Any) -> Any:
    with open(f"{folder}/calls", "a", encoding="utf-8") as fh:
        fh.write("1\n")
    return value


async def _contract_wait(folder: str) -> None:
    with open(f"{folder}/started", "w", encoding="utf-8") as fh:
        fh.write("started\n")
    try:
        await anyio.sleep(60)
    except anyio.get_cancelled_exc_class():
        with open(f"{folder}/cancelled", "w", encoding="utf-8") as fh:
            fh.write("cancelled\n")
        raise


class ExecutorContract:
    """What every :class:`~flowyard.interfaces.Executor` promises.

    Provide a fixture ``executor``. The actions are built from module-level functions with
    :func:`functools.partial` and report through files in ``tmp_path``, not through shared
    objects, so an executor that runs actions in another process (pickling them) is held to
    the same promises as one that awaits them in place.
    """

    pytestmark = _ANYIO
    #: seconds an action may take to start where the executor runs it (a cold worker)
    start_timeout_s: ClassVar[float] = 60.0

    async def test_returns_the_action_result(self, executor: Any) -> None:
        from functools import partial  # lazy: only this contract builds partials

        action = partial(_contract_result, {"answer": [4, 2]})
        assert await executor.execute(action, step_id="s") == {"answer": [4, 2]}

    async def test_errors_propagate_unchanged(self, executor: Any) -> None:
        from functools import partial  # lazy: only this contract builds partials

        with pytest.raises(ContractActionError, match="from the action"):
            await executor.execute(partial(_contract_fail, "from the action"), step_id="s")

    async def test_runs_the_action_once_per_call(self, executor: Any, tmp_path: Any) -> None:
        from functools import partial  # lazy: only this contract builds partials

        async def call(i: int, results: list[Any]) -> None:
            results.append(await executor.execute(partial(_contract_count, str(tmp_path), i),
                                                  step_id=f"s{i}"))

        results: list[Any] = []
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(call, i, results)
        assert sorted(results) == [0, 1, 2, 3]
        assert (tmp_path / "calls").read_text().count("1") == 4

    async def test_cancellation_reaches_the_action(self, executor: Any, tmp_path: Any) -> None:
        from functools import partial  # lazy: only this contract builds partials

        action = partial(_contract_wait, str(tmp_path))
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: executor.execute(action, step_id="s"))
            deadline = time.monotonic() + self.start_timeout_s
            while not (tmp_path / "started").exists():
                assert time.monotonic() < deadline, "the action did not start"
                await anyio.sleep(0.02)
            cancelled_at = time.monotonic()
            tg.cancel_scope.cancel()
        # execute returns once the action has seen its cancellation, and well before the
        # action's 60 s sleep would have ended
        assert (tmp_path / "cancelled").exists()
        assert time.monotonic() - cancelled_at < 30


# ============================================================================ loaders


class WorkflowLoaderContract:
    """What every :class:`~flowyard.interfaces.WorkflowLoader` promises.

    Provide fixtures ``loader``, ``valid_source`` (text of a workflow named ``contract`` with
    at least one step) and ``invalid_source`` (text with a syntax or structure error).
    """

    pytestmark = _ANYIO

    async def test_declares_file_suffixes(self, loader: Any) -> None:
        assert loader.suffixes
        assert all(isinstance(s, str) and s.startswith(".") for s in loader.suffixes)

    async def test_loads_a_valid_workflow(self, loader: Any, valid_source: str) -> None:
        workflow = loader.load(valid_source, path="contract" + loader.suffixes[0])
        assert workflow.name == "contract"
        assert len(workflow.steps) >= 1

    async def test_invalid_source_reports_file_and_line(self, loader: Any,
                                                        invalid_source: str) -> None:
        path = "broken" + loader.suffixes[0]
        with pytest.raises(WorkflowValidationError) as info:
            loader.load(invalid_source, path=path)
        assert info.value.issues
        assert all(issue.file == path and issue.line is not None for issue in info.value.issues)


# ============================================================================ shared limits


class SharedLimitsContract:
    """What every :class:`~flowyard.interfaces.SupportsSharedLimits` backend promises.

    Provide a fixture ``storage`` returning an *opened* backend implementing the protocol, on
    an empty store. Keys are made unique per test (a UUID prefix), so the checks also run on
    a store shared with earlier tests. Expiry checks wait for real time (``hold_s`` and
    cooldowns of 0.3-0.5 s, polled with deadlines), so the suite takes a few seconds.

    The checks, by promise:

    * rate windows: concurrent acquires never admit more than a window's limit; a refused
      caller is told how long to wait (at most the window); after it the call is admitted;
      ``tpm`` counts estimated tokens, corrected by ``actual_tokens`` on release; a retried
      ``permit_id`` is admitted once;
    * concurrency: a slot is freed by release (idempotent) and by ``hold_s`` expiry;
    * pause: nobody is admitted under the key until it ends; other keys are not paused;
    * breakers: ``threshold`` consecutive failures open it for ``cooldown_s``; a success
      resets the count; after the cooldown exactly one concurrent ``before_call`` is the
      probe; a failed probe reopens it, a successful one closes it, an aborted one lets the
      next caller probe;
    * budgets: a reservation is held in every budget or in none; concurrent reservations
      never exceed a limit; settle replaces the held amount with the actual cost and is
      idempotent; a reservation past its ``hold_s`` counts as spent (a late settle changes
      nothing);
    * keys are data (quotes, SQL wildcards, non-ASCII, long), and out-of-range numbers raise
      ValueError.
    """

    pytestmark = _ANYIO

    @staticmethod
    def _backend(storage: Any) -> Any:
        from flowyard.interfaces import SupportsSharedLimits  # lazy: only this suite needs it

        assert isinstance(storage, SupportsSharedLimits), (
            f"{type(storage).__name__} does not implement SupportsSharedLimits")
        return storage

    @staticmethod
    def _key(name: str) -> str:
        return f"{name}:{new_id()}"

    @staticmethod
    async def _admit(backend: Any, key: str, permit: str, *, deadline_s: float = 10.0,
                     **kwargs: Any) -> float:
        """Acquire until admitted, sleeping the returned delays; return the seconds it
        took. Fails after ``deadline_s``.
        """
        started = time.monotonic()
        while True:
            delay = await backend.shared_rate_acquire(key, permit_id=permit, **kwargs)
            if delay == 0.0:
                return time.monotonic() - started
            assert delay > 0
            assert time.monotonic() - started < deadline_s, f"{key}: not admitted in time"
            await anyio.sleep(min(delay, 0.05))

    # ------------------------------------------------------------------ rate limits

    async def test_concurrent_acquires_never_exceed_a_window(self, storage: Any) -> None:
        backend = self._backend(storage)
        key = self._key("rate:window")
        answers: list[float] = []

        async def acquire(i: int) -> None:
            answers.append(await backend.shared_rate_acquire(
                key, permit_id=f"p{i}", windows=[(60.0, 5), (3600.0, 100)]))

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(acquire, i)
        assert sorted(answers).count(0.0) == 5, answers
        assert all(0.0 < a <= 60.0 + 1e-6 for a in answers if a != 0.0), answers

    async def test_a_refused_call_is_admitted_after_its_wait(self, storage: Any) -> None:
        backend = self._backend(storage)
        key = self._key("rate:again")
        windows = [(0.5, 2)]
        assert await backend.shared_rate_acquire(key, permit_id="a", windows=windows) == 0.0
        assert await backend.shared_rate_acquire(key, permit_id="b", windows=windows) == 0.0
        delay = await backend.shared_rate_acquire(key, permit_id="c", windows=windows)
        assert 0.0 < delay <= 0.5 + 1e-6
        took = await self._admit(backend, key, "c", windows=windows)
        assert took >= delay - 0.1  # not admitted before the window moved on
        # a retried permit id is admitted once: it does not take another place
        other, minute = self._key("rate:retry"), [(60.0, 2)]
        for permit in ("x", "x", "x", "y"):
            assert await backend.shared_rate_acquire(other, permit_id=permit,
                                                     windows=minute) == 0.0
        assert await backend.shared_rate_acquire(other, permit_id="z", windows=minute) > 0.0

    async def test_tokens_per_minute_count_actual_tokens_after_release(self, storage: Any
                                                                       ) -> None:
        backend = self._backend(storage)
        key = self._key("rate:tpm")
        assert await backend.shared_rate_acquire(key, permit_id="a", windows=[], tokens=60,
                                                 tpm=100) == 0.0
        delay = await backend.shared_rate_acquire(key, permit_id="b", windows=[], tokens=60,
                                                  tpm=100)
        assert 50.0 < delay <= 60.0 + 1e-6
        await backend.shared_rate_release(key, "a", actual_tokens=10)
        assert await backend.shared_rate_acquire(key, permit_id="b", windows=[], tokens=60,
                                                 tpm=100) == 0.0
        # a call estimated above tpm alone is admitted when the minute is otherwise empty
        other = self._key("rate:tpm-big")
        assert await backend.shared_rate_acquire(other, permit_id="x", windows=[],
                                                 tokens=500, tpm=100) == 0.0

    async def test_concurrency_slots_are_freed_by_release(self, storage: Any) -> None:
        backend = self._backend(storage)
        key = self._key("rate:conc")
        for permit in ("a", "b"):
            assert await backend.shared_rate_acquire(key, permit_id=permit, windows=[],
                                                     concurrency=2) == 0.0
        delay = await backend.shared_rate_acquire(key, permit_id="c", windows=[],
                                                  concurrency=2)
        assert 0.0 < delay <= 1.0  # a short poll interval
        await backend.shared_rate_release(key, "a")
        await backend.shared_rate_release(key, "a")  # idempotent
        await backend.shared_rate_release(key, "never-admitted")  # ignored
        assert await backend.shared_rate_acquire(key, permit_id="c", windows=[],
                                                 concurrency=2) == 0.0
        assert await backend.shared_rate_acquire(key, permit_id="d", windows=[],
                                                 concurrency=2) > 0.0

    async def test_concurrency_slot_of_a_dead_holder_expires(self, storage: Any) -> None:
        backend = self._backend(storage)
        key = self._key("rate:hold")
        started = time.monotonic()
        assert await backend.shared_rate_acquire(key, permit_id="dead", windows=[],
                                                 concurrency=1, hold_s=0.4) == 0.0
        assert await backend.shared_rate_acquire(key, permit_id="next", windows=[],
                                                 concurrency=1) > 0.0
        await self._admit(backend, key, "next", windows=[], concurrency=1)
        assert time.monotonic() - started >= 0.35  # not before the holder's hold_s ran out

    async def test_pause_stops_admissions_of_its_key_only(self, storage: Any) -> None:
        backend = self._backend(storage)
        key, other = self._key("rate:pause"), self._key("rate:other")
        started = time.monotonic()
        await backend.shared_rate_pause(key, 0.8)
        delay = await backend.shared_rate_acquire(key, permit_id="a", windows=[])
        assert 0.0 < delay <= 0.8 + 1e-6
        assert await backend.shared_rate_acquire(other, permit_id="a", windows=[]) == 0.0
        await backend.shared_rate_pause(key, 0.0)  # a shorter pause does not shorten it
        if time.monotonic() - started < 0.6:  # (unless a loaded machine took that long)
            assert await backend.shared_rate_acquire(key, permit_id="a", windows=[]) > 0.0
        await self._admit(backend, key, "a", windows=[])
        assert time.monotonic() - started >= 0.75  # not before the pause ended

    async def test_rate_keys_are_data(self, storage: Any) -> None:
        backend = self._backend(storage)
        prefix = new_id()
        keys = [f"rate:{prefix}:a'; DROP TABLE fy_runs; --", f"rate:{prefix}:%",
                f"rate:{prefix}:_", f"rate:{prefix}:ü/模型 \"x\"", f"rate:{prefix}:" + "k" * 500]
        for key in keys:
            assert await backend.shared_rate_acquire(key, permit_id="p'1",
                                                     windows=[(60.0, 1)]) == 0.0
        for key in keys:  # each key has its own window: all full now
            assert await backend.shared_rate_acquire(key, permit_id="p2",
                                                     windows=[(60.0, 1)]) > 0.0
        assert await backend.shared_rate_acquire(f"rate:{prefix}:b", permit_id="p2",
                                                 windows=[(60.0, 1)]) == 0.0

    @pytest.mark.parametrize("kwargs", [
        {"windows": [(60.0, 0)]}, {"windows": [(0.0, 5)]}, {"windows": [(-1.0, 5)]},
        {"windows": [(float("nan"), 5)]}, {"windows": [], "tokens": -1},
        {"windows": [], "tpm": 0}, {"windows": [], "concurrency": 0},
        {"windows": [], "hold_s": 0.0}, {"windows": [], "hold_s": float("inf")},
    ])
    async def test_rate_arguments_out_of_range_raise(self, storage: Any,
                                                     kwargs: dict[str, Any]) -> None:
        backend = self._backend(storage)
        with pytest.raises(ValueError):
            await backend.shared_rate_acquire(self._key("rate:bad"), permit_id="p", **kwargs)
        with pytest.raises(ValueError):
            await backend.shared_rate_pause(self._key("rate:bad"), -1.0)

    # ------------------------------------------------------------------ breakers

    async def test_breaker_opens_after_consecutive_failures(self, storage: Any) -> None:
        backend = self._backend(storage)
        key = self._key("breaker:open")
        settings = {"threshold": 3, "cooldown_s": 30.0}
        assert await backend.shared_breaker(key, event="check", **settings) == ("closed", None)
        assert (await backend.shared_breaker(key, event="before_call", **settings))[0] == \
            "closed"
        for _ in range(2):
            assert (await backend.shared_breaker(key, event="failure", **settings))[0] == \
                "closed"
        await backend.shared_breaker(key, event="success", **settings)  # resets the count
        for _ in range(2):
            assert (await backend.shared_breaker(key, event="failure", **settings))[0] == \
                "closed"
        state, reopens = await backend.shared_breaker(key, event="failure", **settings)
        assert state == "open" and reopens is not None
        assert 25.0 < reopens - time.time() <= 31.0  # the backend's clock: this host's here
        assert await backend.shared_breaker(key, event="check", **settings) == ("open",
                                                                               reopens)
        assert await backend.shared_breaker(key, event="before_call", **settings) == (
            "open", reopens)
        # another key is independent
        other = self._key("breaker:other")
        assert await backend.shared_breaker(other, event="before_call", **settings) == (
            "closed", None)

    async def _cooled(self, backend: Any, key: str, settings: dict[str, Any]) -> None:
        deadline = time.monotonic() + 10.0
        while (await backend.shared_breaker(key, event="check", **settings))[0] == "open":
            assert time.monotonic() < deadline, "the breaker never cooled down"
            await anyio.sleep(0.05)

    async def test_one_probe_only_after_the_cooldown(self, storage: Any) -> None:
        backend = self._backend(storage)
        key = self._key("breaker:probe")
        # 1 s: the probe of the concurrent callers stays live (not presumed lost) while they
        # all ask, even on a loaded machine
        settings = {"threshold": 1, "cooldown_s": 1.0}
        assert (await backend.shared_breaker(key, event="failure", **settings))[0] == "open"
        await self._cooled(backend, key, settings)
        answers: list[str] = []

        async def ask() -> None:
            answers.append((await backend.shared_breaker(key, event="before_call",
                                                         **settings))[0])

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(ask)
        assert sorted(answers) == ["half_open"] * 7 + ["probe"], answers
        # the probe fails: open again for a new cooldown
        state, reopens = await backend.shared_breaker(key, event="failure", **settings)
        assert state == "open" and reopens is not None and reopens > time.time()
        assert (await backend.shared_breaker(key, event="before_call", **settings))[0] == \
            "open"
        await self._cooled(backend, key, settings)
        assert (await backend.shared_breaker(key, event="before_call", **settings))[0] == \
            "probe"
        assert await backend.shared_breaker(key, event="success", **settings) == ("closed",
                                                                                 None)
        assert (await backend.shared_breaker(key, event="before_call", **settings))[0] == \
            "closed"

    async def test_an_aborted_probe_lets_the_next_caller_probe(self, storage: Any) -> None:
        backend = self._backend(storage)
        key = self._key("breaker:abort")
        settings = {"threshold": 1, "cooldown_s": 0.3}
        await backend.shared_breaker(key, event="failure", **settings)
        await self._cooled(backend, key, settings)
        assert (await backend.shared_breaker(key, event="before_call", **settings))[0] == \
            "probe"
        state, _ = await backend.shared_breaker(key, event="abort", **settings)
        assert state == "open"
        assert (await backend.shared_breaker(key, event="before_call", **settings))[0] == \
            "probe"

    @pytest.mark.parametrize("kwargs", [
        {"event": "explode", "threshold": 1, "cooldown_s": 1.0},
        {"event": "failure", "threshold": 0, "cooldown_s": 1.0},
        {"event": "failure", "threshold": 1, "cooldown_s": 0.0},
    ])
    async def test_breaker_arguments_out_of_range_raise(self, storage: Any,
                                                        kwargs: dict[str, Any]) -> None:
        backend = self._backend(storage)
        with pytest.raises(ValueError):
            await backend.shared_breaker(self._key("breaker:bad"), **kwargs)

    # ------------------------------------------------------------------ budgets

    async def test_budget_reservation_is_all_or_nothing(self, storage: Any) -> None:
        backend = self._backend(storage)
        wide, narrow = self._key("budget:wide"), self._key("budget:narrow")
        assert await backend.shared_budget_state(wide) == {"spent_usd": 0.0,
                                                           "reserved_usd": 0.0}
        assert await backend.shared_budget_reserve("r1", [(wide, 1.0), (narrow, 0.5)],
                                                   0.375) is None
        refused = await backend.shared_budget_reserve("r2", [(wide, 1.0), (narrow, 0.5)],
                                                      0.25)
        assert refused is not None
        assert refused[0] == narrow and refused[1] == 0.0
        assert abs(refused[2] - 0.375) < 1e-9
        state = await backend.shared_budget_state(wide)  # nothing held by the refusal
        assert abs(state["reserved_usd"] - 0.375) < 1e-9 and state["spent_usd"] == 0.0
        # a retried reservation id holds once
        assert await backend.shared_budget_reserve("r1", [(wide, 1.0), (narrow, 0.5)],
                                                   0.375) is None
        assert abs((await backend.shared_budget_state(narrow))["reserved_usd"] - 0.375) < 1e-9
        # an amount above the limit on an empty budget is refused; 0 under a 0 limit is not
        empty = self._key("budget:empty")
        assert await backend.shared_budget_reserve("r3", [(empty, 1.0)], 1.5) == (empty, 0.0,
                                                                                  0.0)
        assert await backend.shared_budget_reserve("r4", [(self._key("budget:zero"), 0.0)],
                                                   0.0) is None

    async def test_concurrent_reservations_never_exceed_the_limit(self, storage: Any
                                                                  ) -> None:
        backend = self._backend(storage)
        key, day = self._key("budget:concurrent"), self._key("budget:day")
        prefix = new_id()
        results: list[Any] = []

        async def reserve(i: int) -> None:
            results.append(await backend.shared_budget_reserve(
                f"{prefix}-{i}", [(day, 10.0), (key, 1.0)], 0.125))

        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(reserve, i)
        assert results.count(None) == 8, results
        state = await backend.shared_budget_state(key)
        assert abs(state["reserved_usd"] - 1.0) < 1e-9 and state["spent_usd"] == 0.0
        assert abs((await backend.shared_budget_state(day))["reserved_usd"] - 1.0) < 1e-9

    async def test_settle_replaces_the_held_amount_once(self, storage: Any) -> None:
        backend = self._backend(storage)
        a, b = self._key("budget:a"), self._key("budget:b")
        rid = new_id()
        assert await backend.shared_budget_reserve(rid, [(a, 1.0), (b, 2.0)], 0.5) is None
        await backend.shared_budget_settle(rid, 0.125)
        await backend.shared_budget_settle(rid, 0.125)  # idempotent
        await backend.shared_budget_settle("unknown-reservation", 0.5)  # ignored
        for key in (a, b):
            state = await backend.shared_budget_state(key)
            assert abs(state["spent_usd"] - 0.125) < 1e-9 and state["reserved_usd"] == 0.0
        unknown = new_id()
        assert await backend.shared_budget_reserve(unknown, [(a, 1.0)], 0.5) is None
        await backend.shared_budget_settle(unknown, None)  # unknown cost: nothing spent
        state = await backend.shared_budget_state(a)
        assert abs(state["spent_usd"] - 0.125) < 1e-9 and state["reserved_usd"] == 0.0
        # a cost above the reservation is spent in full
        over = new_id()
        assert await backend.shared_budget_reserve(over, [(a, 1.0)], 0.25) is None
        await backend.shared_budget_settle(over, 0.5)
        assert abs((await backend.shared_budget_state(a))["spent_usd"] - 0.625) < 1e-9
        assert await backend.shared_budget_reserve(new_id(), [(a, 1.0)], 0.5) is not None

    async def test_an_expired_reservation_counts_as_spent(self, storage: Any) -> None:
        backend = self._backend(storage)
        key = self._key("budget:expired")
        rid = new_id()
        assert await backend.shared_budget_reserve(rid, [(key, 1.0)], 0.75, hold_s=0.3) \
            is None
        deadline = time.monotonic() + 10.0
        while (await backend.shared_budget_state(key))["reserved_usd"] > 0.0:
            assert time.monotonic() < deadline, "the reservation never expired"
            await anyio.sleep(0.05)
        state = await backend.shared_budget_state(key)
        assert abs(state["spent_usd"] - 0.75) < 1e-9
        await backend.shared_budget_settle(rid, 0.0)  # too late: stays spent
        assert abs((await backend.shared_budget_state(key))["spent_usd"] - 0.75) < 1e-9
        assert await backend.shared_budget_reserve(new_id(), [(key, 1.0)], 0.5) is not None
        assert await backend.shared_budget_reserve(new_id(), [(key, 1.0)], 0.25) is None

    async def test_budget_keys_are_data(self, storage: Any) -> None:
        backend = self._backend(storage)
        prefix = new_id()
        keys = [f"budget:{prefix}:a'; DELETE FROM fy_budgets; --", f"budget:{prefix}:%",
                f"budget:{prefix}:ü 模型", f"budget:{prefix}:" + "k" * 500]
        for i, key in enumerate(keys):
            assert await backend.shared_budget_reserve(f"{prefix}'{i}", [(key, 1.0)],
                                                       0.5) is None
        for key in keys:
            assert (await backend.shared_budget_state(key))["reserved_usd"] == 0.5
        assert (await backend.shared_budget_state(f"budget:{prefix}:b"))["reserved_usd"] == 0.0

    @pytest.mark.parametrize("args", [
        ([("k", 1.0)], -0.5, 1.0), ([("k", 1.0)], float("nan"), 1.0),
        ([("k", -1.0)], 0.5, 1.0), ([("k", float("inf"))], 0.5, 1.0),
        ([("k", 1.0)], 0.5, 0.0),
    ])
    async def test_budget_arguments_out_of_range_raise(self, storage: Any,
                                                       args: tuple[Any, ...]) -> None:
        backend = self._backend(storage)
        budgets, amount, hold = args
        budgets = [(self._key("budget:bad"), limit) for _, limit in budgets]
        with pytest.raises(ValueError):
            await backend.shared_budget_reserve(new_id(), budgets, amount, hold_s=hold)
        with pytest.raises(ValueError):
            await backend.shared_budget_settle(new_id(), -1.0)
