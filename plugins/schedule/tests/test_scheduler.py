"""The scheduler on the core's memory storage with a fake clock: catch-up policies, fired
runs linked to their schedule, invalid workflows, pause, the lease between two schedulers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from flowyard import Stack
from flowyard_schedule import Schedule, Scheduler, SchedulerLease, fire_run_id
from flowyard_schedule.scheduler import LEASE_RUN_ID, ScheduleStore

pytestmark = pytest.mark.anyio

WORKFLOW = """\
name: scheduled-echo
inputs:
  n: {type: integer, default: 1}
steps:
  - id: double
    uses: echo
    with: {value: "{{ inputs.n * 2 }}"}
outputs:
  double: "${double}"
"""


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def workflow(tmp_path: Path) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(WORKFLOW)
    return path


def stack() -> Stack:
    return Stack(config={"storage": {"url": "memory://"}})


def make(workflow: Path, **fields: Any) -> Schedule:
    fields.setdefault("every_s", 60.0)
    fields.setdefault("start_at", 0.0)
    fields.setdefault("created_at", 0.0)
    return Schedule(name=fields.pop("name", "tick"), workflow=str(workflow),
                    workflow_sha256=hashlib.sha256(workflow.read_bytes()).hexdigest(),
                    **fields)


async def add(st: Stack, schedule: Schedule) -> None:
    await st.open()
    await ScheduleStore(st.storage).add(schedule)


@pytest.mark.parametrize("policy, expected", [
    ("skip", [600.0]),                            # only the on-time fire
    ("once", [600.0]),                            # the latest missed, once
    ("all", [60.0 * n for n in range(1, 11)]),    # every missed one
])
async def test_catch_up_after_downtime(workflow: Path, policy: str, expected: list[float]
                                       ) -> None:
    st = stack()
    async with st:
        await add(st, make(workflow, catch_up=policy))
        clock = Clock(610.0)  # down since 0: 10 fire times passed, 600 is within the grace
        outcomes = await Scheduler(st, clock=clock).fire_due()
        assert sorted(o.scheduled_for for o in outcomes) == expected
        assert {o.status for o in outcomes} == {"completed"}
        state = await ScheduleStore(st.storage).state("tick")
        assert state["skipped"] == 10 - len(expected)
        assert state["last_scheduled_for"] == 600.0
        assert state["last_run_id"] == fire_run_id("tick", 600.0)


async def test_skip_fires_only_times_within_the_misfire_grace(workflow: Path) -> None:
    st = stack()
    async with st:
        await add(st, make(workflow, catch_up="skip", misfire_grace_s=10.0))
        scheduler = Scheduler(st, clock=Clock(6065.0))  # 6060 is 5 s late: on time
        assert [o.scheduled_for for o in await scheduler.fire_due()] == [6060.0]
        scheduler.clock = Clock(9000.0)  # 9000 is due now, 6120..8940 were missed
        assert [o.scheduled_for for o in await scheduler.fire_due()] == [9000.0]
        scheduler.clock = Clock(9100.0)  # 9060 is 40 s late: missed as well
        assert await scheduler.fire_due() == []
        state = await ScheduleStore(st.storage).state("tick")
        assert state["skipped"] == 100 + 48 + 1  # 60..6000 (100), 6120..8940 (48), 9060
        assert state["last_scheduled_for"] == 9000.0


async def test_all_is_bounded_by_max_catch_up(workflow: Path, caplog: pytest.LogCaptureFixture
                                              ) -> None:
    st = stack()
    async with st:
        await add(st, make(workflow, catch_up="all", max_catch_up=3))
        outcomes = await Scheduler(st, clock=Clock(600.0)).fire_due()
        assert sorted(o.scheduled_for for o in outcomes) == [480.0, 540.0, 600.0]
        assert "7 missed fires before 1970-01-01T00:08:00+00:00 exceed max_catch_up=3" \
            in caplog.text
        assert (await ScheduleStore(st.storage).state("tick"))["skipped"] == 7


async def test_fired_run_links_its_schedule_and_fires_once(workflow: Path) -> None:
    st = stack()
    async with st:
        await add(st, make(workflow, inputs={"n": 21}))
        scheduler = Scheduler(st, clock=Clock(60.0))
        [outcome] = await scheduler.fire_due()
        run = await st.storage.get_run(outcome.run_id)
        assert run.status == "completed" and run.outputs == {"double": 42}
        assert run.metadata["schedule"] == "tick"
        assert run.metadata["scheduled_for"] == "1970-01-01T00:01:00+00:00"
        assert run.metadata["idempotency"]["key"] == "schedule:tick:1970-01-01T00:01:00+00:00"
        assert "workflow_changed" not in run.metadata
        assert await scheduler.fire_due() == []  # nothing new is due at the same time
        # a second scheduler that lost its state (cursor back at 0) re-derives the same
        # fire: the idempotency key gives back the same run, nothing runs twice
        await st.storage.kv_set("schedule.state", "tick", {"cursor": 0.0})
        [again] = await Scheduler(st, clock=Clock(60.0), use_lease=False).fire_due()
        assert again.run_id == outcome.run_id
        runs = [r for r in await st.storage.list_runs(__import__("flowyard").RunQuery())
                if r.metadata.get("schedule") == "tick"]
        assert len(runs) == 1


async def test_invalid_workflow_at_fire_time_is_recorded_and_loop_goes_on(
        workflow: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(WORKFLOW.replace("scheduled-echo", "other"))
    st = stack()
    async with st:
        await add(st, make(workflow))
        await add(st, make(other, name="other"))
        workflow.write_text("name: broken\nsteps:\n  - id: x\n    uses: no.such.tool\n")
        scheduler = Scheduler(st, clock=Clock(60.0))
        outcomes = {o.schedule: o for o in await scheduler.fire_due()}
        assert outcomes["tick"].status == "failed" and outcomes["tick"].run_id is None
        assert "no.such.tool" in (outcomes["tick"].error or "")
        assert outcomes["other"].status == "completed"
        state = await ScheduleStore(st.storage).state("tick")
        assert state["last_status"] == "failed" and "no.such.tool" in state["last_error"]
        assert state["failed"] == 1
        workflow.unlink()
        scheduler.clock = Clock(120.0)
        outcomes = {o.schedule: o for o in await scheduler.fire_due()}
        gone = outcomes["tick"]
        assert gone.status == "failed" and "wf.yaml" in (gone.error or "")


async def test_changed_file_is_marked_on_the_run(workflow: Path) -> None:
    st = stack()
    async with st:
        await add(st, make(workflow))
        workflow.write_text(WORKFLOW.replace("inputs.n * 2", "inputs.n * 3"))
        [outcome] = await Scheduler(st, clock=Clock(60.0)).fire_due()
        run = await st.storage.get_run(outcome.run_id)
        assert run.outputs == {"double": 3} and run.metadata["workflow_changed"] is True


async def test_paused_schedule_skips_its_times(workflow: Path) -> None:
    st = stack()
    async with st:
        await add(st, make(workflow, catch_up="all"))
        store = ScheduleStore(st.storage)
        await store.set_paused("tick", True)
        scheduler = Scheduler(st, clock=Clock(300.0))
        assert await scheduler.fire_due() == []
        await store.set_paused("tick", False)
        scheduler.clock = Clock(360.0)
        assert [o.scheduled_for for o in await scheduler.fire_due()] == [360.0]


async def test_only_the_lease_holder_fires_and_takes_over_after_expiry(workflow: Path
                                                                     ) -> None:
    st = stack()
    async with st:
        await add(st, make(workflow))
        first = Scheduler(st, clock=Clock(60.0), owner="first", lease_s=30)
        second = Scheduler(st, clock=Clock(60.0), owner="second", lease_s=30)
        assert len(await first.fire_due()) == 1
        assert await second.fire_due() == []
        assert second.lease is not None and second.lease.holder is not None
        assert second.lease.holder.owner == "first"
        assert first.lease is not None
        await first.lease.release()
        second.clock = Clock(120.0)
        assert [o.scheduled_for for o in await second.fire_due()] == [120.0]
        marker = await st.storage.get_run(LEASE_RUN_ID)
        assert marker.status == "completed" and marker.metadata == {"schedule_lease": True}


async def test_expired_lease_is_taken_over(workflow: Path) -> None:
    st = stack()
    async with st:
        await st.open()
        a = SchedulerLease(st.storage, lease_s=0.05, owner="a")
        b = SchedulerLease(st.storage, lease_s=30, owner="b")
        assert await a.acquire() and not await b.acquire()
        import anyio

        with anyio.fail_after(5):
            while not await b.acquire():
                await anyio.sleep(0.02)
        assert not await a.acquire()  # a lost it: renew fails, claim refused
        assert a.holder is not None and a.holder.owner == "b"


async def test_store_add_list_remove(workflow: Path) -> None:
    st = stack()
    async with st:
        store = ScheduleStore(st.storage)
        await add(st, make(workflow, name="b"))
        await add(st, make(workflow, name="a"))
        with pytest.raises(Exception, match="schedule 'a' exists"):
            await store.add(make(workflow, name="a"))
        assert [s.name for s in await store.list()] == ["a", "b"]
        await store.remove("a")
        assert [s.name for s in await store.list()] == ["b"]
        with pytest.raises(Exception, match="no schedule 'a'"):
            await store.remove("a")


async def test_successor_fires_the_pending_fires_of_a_dead_scheduler(workflow: Path) -> None:
    st = stack()
    async with st:
        await add(st, make(workflow))
        # a scheduler wrote its fires ahead (cursor past 120) and died before running them
        await st.storage.kv_set("schedule.state", "tick", {"cursor": 125.0,
                                                            "pending": [60.0, 120.0]})
        outcomes = await Scheduler(st, clock=Clock(125.0)).fire_due()
        assert sorted(o.scheduled_for for o in outcomes) == [60.0, 120.0]
        assert {o.run_id for o in outcomes} == {fire_run_id("tick", 60.0),
                                                fire_run_id("tick", 120.0)}
        state = await ScheduleStore(st.storage).state("tick")
        assert state["pending"] == [] and state["cursor"] == 125.0
        assert state["last_scheduled_for"] == 120.0 and state["fired"] == 2


async def test_max_parallel_bounds_the_runs_executing_at_once(tmp_path: Path) -> None:
    import anyio
    import flowyard

    active = peak = 0

    @flowyard.tool(name="test.slow")
    async def slow() -> int:
        """Hold a slot for a moment and count the callers inside at once."""
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await anyio.sleep(0.05)
        active -= 1
        return peak

    class Tools:
        @flowyard.hookimpl
        def register_tools(self, register: Any, config: Any) -> None:
            register(slow.name, slow)

    path = tmp_path / "slow.yaml"
    path.write_text("name: slow\nsteps:\n  - id: s\n    uses: test.slow\n")
    st = Stack([Tools()], config={"storage": {"url": "memory://"}})
    async with st:
        await add(st, make(path, catch_up="all"))
        outcomes = await Scheduler(st, clock=Clock(600.0), max_parallel=3).fire_due()
    assert len(outcomes) == 10 and {o.status for o in outcomes} == {"completed"}
    assert peak == 3
    with pytest.raises(Exception, match="max_parallel"):
        Scheduler(st, max_parallel=0)
