"""``flowyard stats`` derives ``abandoned`` for running runs whose owner is gone."""

from __future__ import annotations

import pytest
from flowyard.engine.lease import LeaseKeeper, LeaseSettings
from flowyard.models import RunRecord
from flowyard.stack import Stack
from flowyard_stats.command import gather_stats

pytestmark = pytest.mark.anyio


async def test_stats_count_abandoned_runs_apart_from_live_ones() -> None:
    stack = Stack([])
    async with stack:
        storage = stack.storage
        for n, (run_id, status) in enumerate([("done", "completed"), ("dead", "running"),
                                              ("alive", "running")]):
            await storage.create_run(RunRecord(id=run_id, workflow_name="w", status=status,
                                               created_at=1_700_000_000.0 + n))
        keeper = LeaseKeeper(storage, "alive", LeaseSettings())
        await keeper.claim()  # held by this live process
        metrics = await gather_stats(stack, events=False)
        assert metrics.runs_by_status == {"completed": 1, "running": 1, "abandoned": 1}
        # only the newest run is considered: it is the live one
        newest = await gather_stats(stack, events=False, max_runs=1)
        assert newest.runs_by_status == {"running": 1}


