"""Run leases on the in-memory storage: a live run holds a lease renewed by heartbeats, a second
resume of it is refused, an expired or dead owner's run is abandoned and taken over, a process
that lost its lease stops writing, and ``flowyard stats`` counts abandoned runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import anyio
import pytest

import flowyard
from flowyard.builtin.memory_storage import MemoryStorage
from flowyard.engine import RunInUseError, RunLeaseLostError
from flowyard.engine.lease import (
    LeaseKeeper,
    LeaseSettings,
    ProcessIdentity,
    lease_state,
    run_state,
)
from flowyard.errors import ConfigError
from flowyard.interfaces import RunLease, RunQuery
from flowyard.models import RunRecord, new_id
from flowyard.stack import Stack
from flowyard.tools import BaseTool

pytestmark = pytest.mark.anyio

#: Heartbeat every 50 ms, lease of 0.4 s: expiry is observable within a test.
SHORT = {"runs": {"heartbeat_interval": 0.05, "lease_timeout": 0.4}}


class Hold(BaseTool):
    """Returns its ``value``; a value in ``held`` waits until ``release`` is set. Counts calls."""

    def __init__(self) -> None:
        self.name = "hold"
        self.description = "holds chosen values"
        self.parameters = {"type": "object"}
        self.idempotent = False
        self.side_effects = ("test",)
        self.held: set[Any] = set()
        self.calls: list[Any] = []
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def run(self, arguments: dict[str, Any], context: Any) -> Any:
        value = arguments.get("value")
        self.calls.append(value)
        if value in self.held:
            self.entered.set()
            await self.release.wait()
        return value


class Plugin:
    def __init__(self, tool: Hold) -> None:
        self.tool = tool

    @flowyard.hookimpl
    def register_tools(self, register: Any, config: Any) -> None:
        register("hold", self.tool)


WF = {
    "name": "leased",
    "steps": [
        {"id": "a", "uses": "hold", "with": {"value": "a"}},
        {"id": "b", "uses": "hold", "with": {"value": "b-{{ steps.a.output }}"}},
        {"id": "c", "uses": "hold", "with": {"value": "c"}, "depends_on": ["b"]},
    ],
    "outputs": {"c": "${c}"},
}


def _foreign_lease(run_id: str, *, expires_in: float, host_id: str = "another-machine",
                   pid: int = 4242, process_start: str = "") -> RunLease:
    now = time.time()
    return RunLease(run_id=run_id, owner=new_id(), host="elsewhere", pid=pid, host_id=host_id,
                    process_start=process_start, acquired_at=now, heartbeat_at=now,
                    expires_at=now + expires_in)


async def _crashed_run(stack: Stack, tool: Hold, run_id: str) -> None:
    """Run until ``b`` is held, then cancel (so ``a`` is checkpointed); then make the stored
    state what a crash mid-run leaves: status running, ``b``'s attempt running."""
    tool.held = {"b-a"}
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: stack.run(WF, run_id=run_id))
        with anyio.fail_after(30):
            await tool.entered.wait()
        tg.cancel_scope.cancel()
    record = await stack.storage.get_run(run_id)
    record.status = "running"
    await stack.storage.update_run(record)
    for attempt in await stack.storage.list_attempts(run_id):
        if attempt.step_key == "b":
            attempt.status = "running"
            await stack.storage.save_attempt(attempt)
    tool.held = set()
    tool.calls.clear()


async def test_a_live_run_is_leased_renewed_and_cannot_be_resumed_twice() -> None:
    tool = Hold()
    tool.held = {"b-a"}
    stack = Stack([Plugin(tool)], config=SHORT)
    async with stack:
        async with anyio.create_task_group() as tg:
            results: list[Any] = []

            async def go() -> None:
                results.append(await stack.run(WF, run_id="live"))

            tg.start_soon(go)
            with anyio.fail_after(30):
                await tool.entered.wait()
            first = (await stack.storage.get_leases(["live"]))["live"]
            assert (first.host, first.pid) == (socket.gethostname(), os.getpid())
            assert first.expires_at == pytest.approx(first.heartbeat_at + 0.4)
            await anyio.sleep(0.6)  # longer than the lease: only heartbeats keep it
            lease = (await stack.storage.get_leases(["live"]))["live"]
            assert lease.owner == first.owner and lease.heartbeat_at > first.heartbeat_at
            record = await stack.storage.get_run("live")
            assert run_state(record, lease) == "running"

            with pytest.raises(RunInUseError) as refused:
                await stack.resume("live")
            message = str(refused.value)
            assert "\n" not in message
            assert "run live" in message and f"pid {os.getpid()}" in message
            assert f"host {socket.gethostname()}" in message and "s ago" in message
            assert refused.value.lease.owner == first.owner
            # the refused resume touched nothing: the in-flight attempt is still running
            attempts = await stack.storage.list_attempts("live")
            assert [(a.step_key, a.status) for a in attempts] == [("a", "completed"),
                                                                  ("b", "running")]
            tool.release.set()
        record = await stack.storage.get_run("live")
        assert await stack.storage.get_leases(["live"]) == {}  # released at the end
    assert results[0].status == "completed" and record.status == "completed"
    assert record.resume_count == 0
    assert tool.calls == ["a", "b-a", "c"]  # every step ran once


async def test_an_expired_lease_makes_the_run_abandoned_and_resumable() -> None:
    tool = Hold()
    stack = Stack([Plugin(tool)], config=SHORT)
    async with stack:
        await _crashed_run(stack, tool, "remote")
        # a process on another machine holds the run: its pid cannot be checked from here
        held = _foreign_lease("remote", expires_in=0.5)
        assert await stack.storage.claim_lease(held, now=time.time()) == held
        record = await stack.storage.get_run("remote")
        assert run_state(record, held) == "running"
        with pytest.raises(RunInUseError, match="host elsewhere, pid 4242"):
            await stack.resume("remote")
        await anyio.sleep(0.6)  # no heartbeat: the lease expires
        assert lease_state(held) == "expired"
        assert run_state(record, held) == "abandoned"
        assert record.status == "running"  # derived, never written behind the user's back
        result = await stack.resume("remote")
        assert await stack.storage.get_leases(["remote"]) == {}
    assert result.status == "completed" and result.resume_count == 1
    assert tool.calls == ["b-a", "c"]  # "a" was checkpointed before the crash


async def test_a_run_without_a_lease_or_with_a_dead_local_owner_is_abandoned() -> None:
    tool = Hold()
    stack = Stack([Plugin(tool)], config=SHORT)
    async with stack:
        await _crashed_run(stack, tool, "orphan")
        record = await stack.storage.get_run("orphan")
        assert run_state(record, None) == "abandoned"  # died between create_run and claim

        if not ProcessIdentity.current().host_id:
            pytest.skip("this platform cannot check the pids of its processes")
        # a process of this machine that is gone, with a lease that has not expired yet
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        me = ProcessIdentity.current()
        dead = _foreign_lease("orphan", expires_in=60, host_id=me.host_id, pid=child.pid)
        await stack.storage.claim_lease(dead, now=time.time())
        assert lease_state(dead) == "dead"
        assert run_state(record, dead) == "abandoned"
        result = await stack.resume("orphan")  # no need to wait for the expiry
    assert result.status == "completed" and tool.calls == ["b-a", "c"]


async def test_a_process_that_lost_its_lease_stops_and_writes_nothing_more() -> None:
    tool = Hold()
    tool.held = {"b-a"}
    stack = Stack([Plugin(tool)], config=SHORT)
    async with stack:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                errors: list[BaseException] = []

                async def go() -> None:
                    try:
                        await stack.run(WF, run_id="taken")
                    except RunLeaseLostError as exc:
                        errors.append(exc)

                tg.start_soon(go)
                await tool.entered.wait()
                mine = (await stack.storage.get_leases(["taken"]))["taken"]
                events_before = await stack.storage.list_events("taken")
                # another process takes the run over (as after this one froze past its lease)
                intruder = _foreign_lease("taken", expires_in=60)
                assert (await stack.storage.claim_lease(intruder, now=time.time(),
                                                        replace_owner=mine.owner)) == intruder
        assert len(errors) == 1
        assert "lost the run's lease" in str(errors[0]) and "host elsewhere" in str(errors[0])
        record = await stack.storage.get_run("taken")
        attempts = await stack.storage.list_attempts("taken")
        events = await stack.storage.list_events("taken")
        leases = await stack.storage.get_leases(["taken"])
    # the loser neither finished the run record, nor closed its attempt, nor released the
    # new owner's lease, nor wrote events
    assert record.status == "running" and record.finished_at is None
    assert [(a.step_key, a.status) for a in attempts] == [("a", "completed"), ("b", "running")]
    assert events == events_before
    assert leases == {"taken": intruder}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_owner_liveness_detects_exit_zombies_and_reused_pids() -> None:
    me = ProcessIdentity.current()
    assert me.host_id and me.process_start
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = ProcessIdentity._compute(child.pid).process_start  # noqa: SLF001
        alive = _foreign_lease("x", expires_in=60, host_id=me.host_id, pid=child.pid,
                               process_start=start)
        assert me.owner_alive(alive) is True
        reused = attrs_evolve(alive, process_start=str(int(start) - 1))
        assert me.owner_alive(reused) is False  # same pid, another process
        assert me.owner_alive(attrs_evolve(alive, host_id="other")) is None
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while me.owner_alive(alive) is not False:  # a zombie until reaped: already dead
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        child.kill()
        child.wait()
    assert me.owner_alive(alive) is False
    own = _foreign_lease("x", expires_in=60, host_id=me.host_id, pid=me.pid,
                         process_start=me.process_start)
    assert me.owner_alive(own) is True


def attrs_evolve(lease: RunLease, **changes: Any) -> RunLease:
    import attrs

    return attrs.evolve(lease, **changes)


@pytest.mark.parametrize("runs", [
    {"heartbeat_interval": 5, "lease_timeout": 5},
    {"heartbeat_interval": 0},
    {"lease_timeout": "soon"},
])
async def test_invalid_lease_settings_are_refused_before_a_run_is_created(
        runs: dict[str, Any]) -> None:
    stack = Stack([Plugin(Hold())], config={"runs": runs})
    async with stack:
        with pytest.raises(ConfigError, match="runs\\."):
            await stack.run(WF, run_id="never")
        assert await stack.storage.list_runs(RunQuery()) == []


async def test_settings_read_from_config() -> None:
    stack = Stack([], config={"runs": {"heartbeat_interval": "2", "lease_timeout": 9}})
    assert LeaseSettings.from_config(stack.config) == LeaseSettings(2.0, 9.0)
    assert LeaseSettings.from_config(Stack([]).config) == LeaseSettings(5.0, 30.0)


class _RenewBug(RuntimeError):
    pass


class BuggyRenewStorage(MemoryStorage):
    """A third-party backend whose renew_lease has a bug (raises a non-StorageError)."""

    async def renew_lease(self, run_id: str, owner: str, *, heartbeat_at: float,
                          expires_at: float) -> bool:
        raise _RenewBug("renew_lease is broken")


class BuggyStoragePlugin:
    @flowyard.hookimpl
    def register_storage(self, register: Any, config: Any) -> None:
        register("buggy", lambda url, config: BuggyRenewStorage(url, config))


async def test_a_backend_bug_while_renewing_stops_the_run_with_that_error() -> None:
    tool = Hold()
    tool.held = {"b-a"}
    stack = Stack([Plugin(tool), BuggyStoragePlugin()],
                  config={**SHORT, "storage": {"url": "buggy://"}})
    async with stack:
        with anyio.fail_after(30), pytest.raises(_RenewBug, match="broken"):
            await stack.run(WF, run_id="bug")  # held at "b" until the heartbeat fails
        record = await stack.storage.get_run("bug")
        leases = await stack.storage.get_leases(["bug"])
    assert record.status == "cancelled" and leases == {}
