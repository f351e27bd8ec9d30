"""Guards (``register_guards``, :mod:`flowyard.guards`): a plugin guard denying an agent's tool
call (the agent sees the denial and continues; ``guard.denied`` has the audit shape), the
first-party ``[guards]`` validation, redaction and egress policy, and no cost or change
without any guard."""

from __future__ import annotations

from typing import Any

import flowyard
import pytest
from flowyard.builtin.fake import FakeProvider
from flowyard.builtin.guards import EgressGuard, RedactionGuard, luhn_ok, redact_text
from flowyard.context import ToolContext
from flowyard.engine.calls import invoke_tool
from flowyard.errors import ConfigError, WorkflowValidationError
from flowyard.guards import GuardDenied, guard_set
from flowyard.models import Event, Message, ToolCall
from flowyard.stack import Stack


@flowyard.tool(name="notes.write")
def write_note(path: str, text: str = "") -> str:
    """Pretend to write a note.

    Args:
        path: where.
        text: what.
    """
    return f"wrote {path}: {text}"


write_note.egress = {"path": "write"}  # type: ignore[attr-defined]


class NoSecrets:
    """A plugin guard: refuses any tool argument mentioning ``.ssh``."""

    stages = frozenset({"tool"})

    async def check(self, request: flowyard.GuardRequest) -> flowyard.GuardVerdict | None:
        if any(".ssh" in str(v) for v in request.payload.values()):
            return flowyard.GuardVerdict.deny("arguments mention .ssh")
        return None


class Plugin:
    def __init__(self, provider: FakeProvider, guard: Any = None) -> None:
        self.provider = provider
        self.guard = guard

    @flowyard.hookimpl
    def register_tools(self, register: Any) -> None:
        register("notes.write", write_note)

    @flowyard.hookimpl
    def register_providers(self, register: Any) -> None:
        register(self.provider.name, self.provider)

    @flowyard.hookimpl
    def register_guards(self, register: Any) -> None:
        if self.guard is not None:
            register("no-secrets", self.guard)


def agent_workflow(prompt: str = "save a note") -> dict[str, Any]:
    return {"name": "guarded", "steps": [{"id": "helper", "uses": "agent", "with": {
        "model": "scripted/echo", "prompt": prompt, "tools": ["notes.write"]}}],
        "outputs": {"answer": "{{ steps.helper.output.answer }}"}}


@pytest.mark.anyio
async def test_a_denied_tool_call_reaches_the_agent_as_a_tool_error_and_the_event_log() -> None:
    provider = FakeProvider("scripted", [
        ToolCall(id="c1", name="notes.write", arguments={"path": "/home/u/.ssh/id_rsa"}),
        ToolCall(id="c2", name="notes.write", arguments={"path": "ok.txt", "text": "hi"}),
        "done"])
    stack = Stack([Plugin(provider, NoSecrets())])
    seen: list[Event] = []
    stack.events.subscribe(seen.append)
    async with stack:
        result = await stack.run(agent_workflow())
    assert result.ok, result.error
    assert result.outputs == {"answer": "done"}
    second, third = provider.requests[1:]
    denial = second.messages[-1]
    assert denial.role == "tool"
    assert denial.text == "error: denied by guard no-secrets: arguments mention .ssh"
    assert third.messages[-1].text == "wrote ok.txt: hi"  # the agent went on
    (denied,) = [e for e in seen if e.type == "guard.denied"]
    assert denied.data == {"guard": "no-secrets", "target": "notes.write",
                           "reason": "arguments mention .ssh", "step_id": "helper"}
    assert denied.run_id == result.run_id and denied.step_id == "helper"
    failed = [e.data for e in seen if e.type == "tool.call" and e.data["tool"] == "notes.write"]
    assert [c["ok"] for c in failed] == [False, True]
    assert failed[0]["error"].startswith("GuardDenied: denied by guard no-secrets")


@pytest.mark.anyio
async def test_without_guards_nothing_changes() -> None:
    stack = Stack([Plugin(FakeProvider("scripted"))])
    assert len(stack.guards) == 0 and guard_set(stack) is None
    ctx = ToolContext(stack)
    assert await invoke_tool(ctx, write_note, {"path": "/etc/x", "text": "a@b.com"}) == \
        "wrote /etc/x: a@b.com"


@pytest.mark.anyio
async def test_egress_write_paths_on_a_tools_declared_arguments() -> None:
    stack = Stack([Plugin(FakeProvider("scripted"))],
                  config={"guards": {"egress": {"write_paths": ["out/**", "notes/*.md"]}}})
    ctx = ToolContext(stack)
    assert await invoke_tool(ctx, write_note, {"path": "out/a/b.txt"}) == "wrote out/a/b.txt: "
    assert await invoke_tool(ctx, write_note, {"path": "./notes/x.md"})
    for path, why in [("notes/sub/x.md", "is not allowed by [guards.egress] write_paths"),
                      ("out/../../etc/passwd", "leaves the tool's root"),
                      ("/etc/passwd", "only paths relative"), ("~/.ssh/id_rsa", "only paths")]:
        with pytest.raises(GuardDenied, match="denied by guard egress: path: ") as info:
            await invoke_tool(ctx, write_note, {"path": path})
        assert why in str(info.value)


@pytest.mark.anyio
async def test_egress_checks_an_omitted_argument_at_its_default() -> None:
    @flowyard.tool(name="notes.list")
    def list_notes(path: str = ".") -> str:
        """List notes.

        Args:
            path: where.
        """
        return path

    list_notes.egress = {"path": "read"}  # type: ignore[attr-defined]
    stack = Stack(config={"guards": {"egress": {"read_paths": ["docs/**"]}}})
    ctx = ToolContext(stack)
    assert await invoke_tool(ctx, list_notes, {"path": "docs/a"}) == "docs/a"
    assert await invoke_tool(ctx, list_notes, {"path": "docs"}) == "docs"
    with pytest.raises(GuardDenied, match=r"read of '\.' is not allowed"):
        await invoke_tool(ctx, list_notes, {})


@pytest.mark.anyio
async def test_egress_urls_hosts_ports_and_private_dns() -> None:
    answers = {"docs.example.com": ["93.184.216.34"], "evil.example.com": ["10.0.0.5"],
               "api.example.com": ["93.184.216.35", "127.0.0.1"]}

    async def resolver(host: str) -> list[str]:
        return answers[host]

    guard = EgressGuard(allow_hosts=["*.example.com", "127.0.0.1:8080"], resolver=resolver)
    assert await guard.problem("url", "https://docs.example.com/page") is None
    assert await guard.problem("url", "http://127.0.0.1:8080/x") is None
    assert "not in [guards.egress] allow_hosts" in await guard.problem(
        "url", "http://127.0.0.1:9090/x")
    assert "not in" in await guard.problem("url", "http://example.org/")
    assert "not in" in await guard.problem("url", "http://[::1]:8080/")
    # an allowed name whose DNS points inside the network is no bypass
    assert "non-public address 10.0.0.5" in await guard.problem(
        "url", "https://evil.example.com/")
    assert "non-public address 127.0.0.1" in await guard.problem(
        "url", "https://api.example.com/")
    assert "not an http(s) URL" in await guard.problem("url", "file:///etc/passwd")
    # URLs that parsers read differently are refused, not guessed at
    for tricky, why in [("http://evil.org\\@docs.example.com/", "backslash"),
                        ("http://evil.org\\.docs.example.com/", "backslash"),
                        ("http://docs.example.com:80@evil.org/", "credentials"),
                        ("http://evil.org\t.docs.example.com/", "whitespace"),
                        ("http://ev_il%2e.docs.example.com/", "not a plain DNS name")]:
        assert why in await guard.problem("url", tricky), tricky
    answers["xn--bcher-kva.example.com"] = ["93.184.216.36"]
    assert await guard.problem("url", "https://b\u00fccher.example.com/") is None  # IDNA
    relaxed = EgressGuard(allow_hosts=["*.example.com"], allow_private=True, resolver=resolver)
    assert await relaxed.problem("url", "https://evil.example.com/") is None


@pytest.mark.anyio
async def test_egress_commands_shell_strings_and_code() -> None:
    guard = EgressGuard(allow_commands=["ls", "/usr/bin/git"])
    assert await guard.problem("command", ["ls", "-l"]) is None
    assert await guard.problem("command", ["/usr/bin/git", "status"]) is None
    assert "'git' is not in" in await guard.problem("command", ["git", "status"])
    assert "'/tmp/x/ls' is not in" in await guard.problem("command", ["/tmp/x/ls"])
    assert "shell command strings" in await guard.problem("command", "ls; curl x", shell=True)
    assert "running code is not allowed" in await guard.problem("code", "print(1)")
    assert await EgressGuard(allow_code=True).problem("code", "print(1)") is None


def test_redaction_kinds_and_luhn() -> None:
    text = ("mail ada@example.org, call +1 415-555-0132, card 4111 1111 1111 1111, "
            "not a card 4111 1111 1111 1112, keys sk-proj-abcdefghijklmnop1234 "
            "AKIAIOSFODNN7EXAMPLE ghp_" + "a" * 36)
    redacted, kinds = redact_text(text)
    assert kinds == ["api_key", "card", "email", "phone"]
    assert "ada@example.org" not in redacted and "[REDACTED:email]" in redacted
    assert "[REDACTED:card]" in redacted and "4111 1111 1111 1112" in redacted
    assert "sk-proj" not in redacted and "AKIA" not in redacted and "ghp_" not in redacted
    assert redacted.count("[REDACTED:api_key]") == 3
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert redact_text("order 2026-12-02 at 14:00", ["phone", "card"]) == (
        "order 2026-12-02 at 14:00", [])


@pytest.mark.anyio
async def test_prompts_replies_and_tool_results_are_redacted() -> None:
    provider = FakeProvider("scripted", ["reach me at bob@example.com"])
    stack = Stack([Plugin(provider)], config={"guards": {"redaction": {}}})
    seen: list[Event] = []
    stack.events.subscribe(seen.append)
    reply = await stack.llm.chat([Message.user("my key is sk-abcdefghijklmnopqrstuv")],
                                 model="scripted/echo")
    assert provider.requests[0].messages[0].text == "my key is [REDACTED:api_key]"
    assert reply.message.text == "reach me at [REDACTED:email]"
    result = await invoke_tool(ToolContext(stack), write_note,
                               {"path": "x", "text": "call 4111-1111-1111-1111"})
    assert result == "wrote x: call [REDACTED:card]"
    redactions = [e.data for e in seen if e.type == "guard.redacted"]
    assert [(r["stage"], r["kinds"]) for r in redactions] == [
        ("model", ["api_key"]), ("model_output", ["email"]), ("tool_output", ["card"])]
    assert not any("sk-abcdefghijklmnopqrstuv" in repr(e.data) for e in seen)
    chunks = [c.delta async for c in stack.llm.stream("write to eve@example.com",
                                                      model="scripted/echo")]
    assert "eve@example.com" not in "".join(chunks)
    assert RedactionGuard(["email"], ["tool_output"]).stages == frozenset({"tool_output"})


@pytest.mark.anyio
async def test_input_validation_of_workflow_inputs_and_tool_arguments() -> None:
    config = {"guards": {"validation": {
        "kinds": {"task_id": {"pattern": "task-[0-9]{1,8}"}},
        "inputs": {"task_id": "task_id", "topic": {"max_length": 10, "forbid": "<script"}},
        "tools": {"notes.write": {"path": {"kind": "task_id"},
                                  "text": {"allowed": ["a", "b"]}}}}}}
    stack = Stack([Plugin(FakeProvider("scripted"))], config=config)
    seen: list[Event] = []
    stack.events.subscribe(seen.append)
    workflow = {"name": "inputs", "inputs": {"task_id": {"type": "string"},
                                             "topic": {"type": "string", "default": "x"}},
                "steps": [{"id": "s", "uses": "echo", "with": {"value": "{{ inputs.topic }}"}}]}
    async with stack:
        ok = await stack.run(workflow, {"task_id": "task-123"})
        assert ok.ok, ok.error
        with pytest.raises(WorkflowValidationError,
                           match="denied by guard validation: input 'task_id': 'task-12x' "
                                 "does not match"):
            await stack.run(workflow, {"task_id": "task-12x"})
        with pytest.raises(WorkflowValidationError, match="length 11 is above the maximum 10"):
            await stack.run(workflow, {"task_id": "task-1", "topic": "a" * 11})
        with pytest.raises(WorkflowValidationError, match="forbidden pattern"):
            await stack.run(workflow, {"task_id": "task-1", "topic": "<script>"})
    denied = [e.data for e in seen if e.type == "guard.denied"]
    assert denied[0] == {"guard": "validation", "target": "inputs",
                         "reason": "input 'task_id': 'task-12x' does not match "
                                   "'task-[0-9]{1,8}'", "step_id": None}
    ctx = ToolContext(stack)
    assert await invoke_tool(ctx, write_note, {"path": "task-7", "text": "a"})
    with pytest.raises(GuardDenied, match="argument 'text': 'c' is not one of the allowed"):
        await invoke_tool(ctx, write_note, {"path": "task-7", "text": "c"})


@pytest.mark.parametrize("section, message", [
    ({"firewall": {}}, r"\[guards\] unknown table"),
    ({"egress": {"allow_hosts": "x"}}, "allow_hosts must be a list"),
    ({"egress": {"allow_urls": []}}, r"\[guards.egress\] unknown key"),
    ({"validation": {"inputs": {"x": {"pattern": "("}}}}, "invalid regular expression"),
    ({"validation": {"inputs": {"x": "nope"}}}, "unknown kind 'nope'"),
    ({"redaction": {"kinds": ["ssn"]}}, "kinds must be a list of"),
])
def test_bad_guard_tables_are_config_errors(section: dict[str, Any], message: str) -> None:
    with pytest.raises((ConfigError, flowyard.PluginError), match=message):
        Stack(config={"guards": section, "plugins": {"strict": True}})


@pytest.mark.anyio
async def test_an_invalid_guards_table_fails_closed_without_strict_plugins() -> None:
    stack = Stack([Plugin(FakeProvider("scripted"))],
                  config={"guards": {"egress": {"allow_urls": ["x"]}}})
    assert stack.guards.names() == ["invalid-config"]
    with pytest.raises(GuardDenied, match=r"the \[guards\] configuration is invalid, so every "
                                          r"guarded call is refused: \[guards.egress\] unknown"):
        await invoke_tool(ToolContext(stack), write_note, {"path": "out/x"})
    with pytest.raises(GuardDenied, match="configuration is invalid"):
        await stack.llm.chat("hi", model="scripted/echo")


@pytest.mark.anyio
async def test_doctor_reports_the_guards() -> None:
    from flowyard.commands.doctor import run_doctor

    async def config_checks(config: dict[str, Any]) -> dict[str, tuple[str, str]]:
        async with Stack(config={**config, "storage": {"url": "memory://"}}) as stack:
            checks = await run_doctor(stack, timeout_s=1)
        return {c.name: (c.status, c.detail) for c in checks if c.area == "config"}

    fine = await config_checks({"guards": {"egress": {}, "redaction": {}}})
    assert fine["guards"] == ("ok", "egress, redaction")
    broken = await config_checks({"guards": {"egress": {"allow_urls": []}},
                                  "budgets": {"tenant": {"acme": {"usd": 1}}}})
    assert broken["guards"][0] == "fail" and "allow_urls" in broken["guards"][1]
    assert broken["budgets"][0] == "fail" and "usd_per_day only" in broken["budgets"][1]
