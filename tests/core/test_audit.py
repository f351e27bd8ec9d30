"""The audit log in core: hash chain and verification (tampering found at the right record),
the listener's records for tool calls, guard denials and key uses, who did it, the JSON-lines
export, and secrets kept out of records."""

from __future__ import annotations

import getpass
import json
from itertools import pairwise
from typing import Any

import attrs
import pytest
from flowyard import (
    GENESIS_HASH,
    AuditRecord,
    Stack,
    audit_from_json,
    audit_to_json,
    hash_audit,
    verify_audit,
    verify_audit_records,
)
from flowyard.audit import redact_command, redact_url, tool_resource
from flowyard.models import Event

pytestmark = pytest.mark.anyio

CANARY = "sk-CANARY0123456789abcdefXYZ"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _stack_with(records: int) -> tuple[Stack, list[AuditRecord]]:
    stack = Stack(config={"storage": {"url": "memory://"}})
    await stack.open()
    stored = await stack.storage.append_audit(
        [AuditRecord(action="tool.call", actor=f"user:u{i}", resource=f"r{i}",
                     details={"i": i}) for i in range(records)])
    return stack, stored


def _tampered(stack: Stack) -> list[AuditRecord]:
    return stack.storage._audit  # the memory backend's list, to tamper with


async def test_an_intact_chain_verifies_and_links_from_the_genesis() -> None:
    stack, stored = await _stack_with(5)
    assert stored[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in pairwise(stored))
    result = await verify_audit(stack.storage)
    assert result.ok and result.checked == 5 and result.head_seq == 5
    assert result.head_hash == stored[-1].hash
    empty = verify_audit_records([])
    assert empty.ok and empty.head_seq == 0 and empty.head_hash == GENESIS_HASH


@pytest.mark.parametrize("field, value", [("resource", "other"), ("actor", "user:mallory"),
                                          ("outcome", "error"), ("time", 1.0),
                                          ("details", {"i": 99}), ("tenant", "t")])
async def test_an_altered_field_is_found_at_its_record(field: str, value: Any) -> None:
    stack, _ = await _stack_with(5)
    rows = _tampered(stack)
    rows[2] = attrs.evolve(rows[2], **{field: value})
    result = await verify_audit(stack.storage)
    assert not result.ok and result.bad_seq == 3 and "altered" in (result.reason or "")
    assert result.head_seq == 2


async def test_an_altered_record_with_a_recomputed_hash_breaks_the_next_link() -> None:
    stack, _ = await _stack_with(5)
    rows = _tampered(stack)
    forged = attrs.evolve(rows[1], resource="forged")
    rows[1] = attrs.evolve(forged, hash=hash_audit(forged))
    result = await verify_audit(stack.storage)
    assert not result.ok and result.bad_seq == 3 and "prev_hash" in (result.reason or "")


async def test_a_deleted_record_is_found_where_it_is_missing() -> None:
    stack, _ = await _stack_with(5)
    del _tampered(stack)[2]
    result = await verify_audit(stack.storage)
    assert not result.ok and result.bad_seq == 3 and "missing" in (result.reason or "")


async def test_a_deleted_and_renumbered_record_is_found() -> None:
    stack, _ = await _stack_with(5)
    rows = _tampered(stack)
    del rows[2]
    rows[2:] = [attrs.evolve(r, seq=r.seq - 1) for r in rows[2:]]
    result = await verify_audit(stack.storage)
    assert not result.ok and result.bad_seq == 3 and "prev_hash" in (result.reason or "")


async def test_two_swapped_records_are_found_at_the_first() -> None:
    stack, _ = await _stack_with(5)
    rows = _tampered(stack)
    # the rows' contents change places, their seq stay (as an UPDATE of two rows would)
    rows[1], rows[2] = (attrs.evolve(rows[2], seq=2), attrs.evolve(rows[1], seq=3))
    result = await verify_audit(stack.storage)
    assert not result.ok and result.bad_seq == 2


async def test_reordered_records_are_found() -> None:
    records = [r for r in (await _stack_with(4))[1]]
    result = verify_audit_records([records[0], records[2], records[1], records[3]])
    assert not result.ok and result.bad_seq == 2 and "missing" in (result.reason or "")
    result = verify_audit_records([records[0], records[1], records[1]])
    assert not result.ok and result.bad_seq == 3 and "out of order" in (result.reason or "")


async def test_a_truncated_head_is_found_at_record_1() -> None:
    stack, _ = await _stack_with(5)
    del _tampered(stack)[:2]
    result = await verify_audit(stack.storage)
    assert not result.ok and result.bad_seq == 1 and "start" in (result.reason or "")
    assert result.head_seq == 0


async def test_json_lines_export_round_trips_and_verifies() -> None:
    _, stored = await _stack_with(3)
    lines = [audit_to_json(r) for r in stored]
    assert all("\n" not in line for line in lines)
    back = [audit_from_json(line) for line in lines]
    assert back == stored
    assert verify_audit_records(back).ok
    edited = json.loads(lines[1])
    edited["outcome"] = "denied"
    result = verify_audit_records([back[0], audit_from_json(json.dumps(edited)), back[2]])
    assert not result.ok and result.bad_seq == 2
    with pytest.raises(ValueError):
        audit_from_json('{"action": "x"}')


# ----------------------------------------------------------------------------- the listener


def _tool_event(run_id: str, tool: str, *, ok: bool = True, resource: str | None = None,
                error: str | None = None) -> Event:
    return Event(type="tool.call", run_id=run_id, step_id="s1",
                 data={"tool": tool, "idempotent": False, "side_effects": ["filesystem"],
                       "duration_s": 0.1, "ok": ok, "error": error, "agent": None,
                       "resource": resource})


async def test_the_listener_records_tool_calls_denials_and_key_uses() -> None:
    async with Stack(config={"storage": {"url": "memory://"}}) as stack:
        audit = stack.listeners.get("audit")
        stack.events.emit(_tool_event("", "filesystem.write", resource="notes/a.txt"))
        stack.events.emit(_tool_event("", "shell.run", ok=False, resource="ls -l",
                                      error="ToolError: exit status 2"))
        stack.events.emit(Event(type="guard.denied", run_id="",
                                data={"guard": "egress", "target": "web.fetch",
                                      "reason": "host not allowed", "step_id": "s2"}))
        stack.events.emit(Event(type="keystore.used", run_id="", data={"name": "openai"}))
        stack.events.emit(Event(type="step.started", run_id="", data={}))  # not audited
        await audit.flush()
        records = await stack.storage.list_audit()
    me = f"user:{getpass.getuser()}"
    assert [(r.action, r.resource, r.outcome, r.actor) for r in records] == [
        ("file.write", "notes/a.txt", "ok", me),
        ("command.run", "ls -l", "error", me),
        ("policy.denied", "web.fetch", "denied", me),
        ("key.used", "openai", "ok", me),
    ]
    assert records[1].details["error"] == "ToolError: exit status 2"
    assert records[2].details == {"guard": "egress", "reason": "host not allowed"}
    assert records[2].step_id == "s2"
    assert verify_audit_records(records).ok


async def test_the_actor_comes_from_the_run_metadata() -> None:
    async with Stack(config={"storage": {"url": "memory://"}}) as stack:
        workflow = stack.load_workflow({"name": "w", "steps": [
            {"id": "a", "uses": "echo", "with": {"value": 1}}]})
        served = await stack.run(workflow, {}, metadata={
            "actor": {"actor": "api_key:0123456789ab", "tenant": "acme"}})
        local = await stack.run(workflow, {})
        await stack.listeners.get("audit").flush()
        records = await stack.storage.list_audit()
    by_run = {r.run_id: r for r in records}
    assert (by_run[served.run_id].actor, by_run[served.run_id].tenant) == (
        "api_key:0123456789ab", "acme")
    assert (by_run[local.run_id].actor, by_run[local.run_id].tenant) == (
        f"user:{getpass.getuser()}", None)
    assert by_run[served.run_id].action == "tool.call"
    assert by_run[served.run_id].resource == "echo"


async def test_records_are_written_before_the_storage_closes() -> None:
    stack = Stack(config={"storage": {"url": "memory://"}})
    await stack.open()
    stack.events.emit(_tool_event("", "filesystem.delete", resource="x"))
    assert stack.listeners.get("audit").pending == 1  # buffered: no event loop task ran yet
    storage = stack.storage
    await stack.aclose()
    await storage.open()
    assert [r.action for r in await storage.list_audit()] == ["file.delete"]


async def test_a_failed_append_keeps_the_records_and_aclose_raises() -> None:
    from flowyard import StorageError

    stack = Stack(config={"storage": {"url": "memory://"}})
    await stack.open()
    audit = stack.listeners.get("audit")
    await stack.storage.close()  # appends now fail
    stack.events.emit(_tool_event("", "web.fetch", resource="http://h/"))
    with pytest.raises(StorageError):
        await audit.flush()
    assert audit.pending == 1
    await stack.storage.open()
    await audit.flush()
    assert audit.pending == 0 and len(await stack.storage.list_audit()) == 1
    await stack.aclose()


def test_the_local_actor_is_the_os_user_or_its_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowyard import local_actor

    assert local_actor() == f"user:{getpass.getuser()}"

    def nameless() -> str:
        raise OSError("no username")

    monkeypatch.setattr(getpass, "getuser", nameless)
    import os

    assert local_actor() == f"uid:{os.getuid()}"


def test_bad_audit_configuration_is_refused() -> None:
    """Reported like any plugin's configuration error (raised with ``plugins.strict``)."""
    from flowyard import PluginError

    stack = Stack(config={"audit": {"flush_interval": -1}})
    builtin = next(p for p in stack.plugin_report if p.name == "builtin")
    assert builtin.status == "failed" and "[audit] flush_interval" in (builtin.error or "")
    assert "audit" not in stack.listeners.names()
    with pytest.raises((PluginError, ValueError), match="enabled"):
        Stack(config={"audit": {"enabled": "no"}, "plugins": {"strict": True}})


async def test_audit_can_be_turned_off() -> None:
    stack = Stack(config={"storage": {"url": "memory://"}, "audit": {"enabled": False}})
    assert "audit" not in stack.listeners.names()


# ----------------------------------------------------------------------------- secrets


def test_resources_keep_secrets_out() -> None:
    url = f"https://user:{CANARY}@example.com:8443/p/a?token={CANARY}&q=1#frag-{CANARY}"
    assert redact_url(url) == "https://example.com:8443/p/a?token=***&q=***"
    assert redact_url("https://h/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/send") == (
        "https://h/***/send")
    assert redact_url("http://evil/x/tok-6f1d0c9a-exfil-canary-42") == "http://evil/x/***"
    for command in (f"curl -H 'Authorization: Bearer {CANARY}' https://x/",
                    f"mysql --password {CANARY} db", f"env API_KEY={CANARY} run",
                    f"tool --api-key={CANARY}", f"echo {CANARY}",
                    f"git clone https://bob:{CANARY}@github.com/x.git",
                    "curl -d data=tok-6f1d0c9a-exfil-canary-42 http://h/collect",
                    "echo 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"):
        redacted = redact_command(command)
        assert CANARY not in redacted and "canary-42" not in redacted, command
        assert "9f86d081884c7d65" not in redacted, command
    kept = "cp /srv/data/report_2024_final_version.txt ./out -r --verbose"
    assert redact_command(kept) == kept  # paths, short words and flags stay
    assert tool_resource("shell.run", {"command": ["ls", "-l", "/tmp"]}) == "ls -l /tmp"
    assert tool_resource("filesystem.write", {"path": "a.txt", "content": CANARY}) == "a.txt"
    assert tool_resource("filesystem.move", {"source": "a", "destination": "b"}) == "a -> b"
    assert tool_resource("python.run", {"code": f"print('{CANARY}')"}) == "<inline code>"
    assert tool_resource("echo", {"value": CANARY}) is None


async def test_the_canary_never_reaches_a_record() -> None:
    async with Stack(config={"storage": {"url": "memory://"}}) as stack:
        stack.events.emit(_tool_event(
            "", "shell.run", ok=False,
            resource=tool_resource("shell.run", {"command": ["curl", "-H",
                                                             f"Authorization: Bearer {CANARY}",
                                                             f"https://h/?key={CANARY}"]}),
            error=f"ToolError: failed with token={CANARY}"))
        stack.events.emit(_tool_event("", "filesystem.write",
                                      resource=tool_resource("filesystem.write",
                                                             {"path": "f", "content": CANARY})))
        await stack.listeners.get("audit").flush()
        exported = "\n".join(audit_to_json(r) for r in await stack.storage.list_audit())
    assert exported.count("\n") == 1 and CANARY not in exported
