"""Atomicity across processes: four processes released at once by a go key contend for the
same queue, rate window and budget on one Redis server.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from flowyard import TaskRecord, new_id
from flowyard_redis.storage import RedisStorage

pytestmark = pytest.mark.anyio

_CONTENDER = Path(__file__).with_name("redis_contender.py")


@pytest.fixture
def anyio_backend() -> str:
    """The contenders are processes: one event loop backend for the parent suffices."""
    return "asyncio"


def _contend(url: str, storage: RedisStorage, mode: str, count: int = 4) -> list[list[str]]:
    """Start ``count`` contenders, release them together once all are ready, and return
    each one's output lines.
    """
    procs = [subprocess.Popen([sys.executable, str(_CONTENDER), url, mode, f"p{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(count)]
    raw = redis.Redis.from_url(url.split("?")[0])
    deadline = time.monotonic() + 60
    while sum(raw.exists(storage.k("ready", f"p{i}")) for i in range(count)) < count:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline, "contenders not ready within 60 s"
        time.sleep(0.01)  # polling interval
    raw.set(storage.k("go"), 1)
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out.split())
    return outputs


async def test_four_processes_claim_each_task_once(redis_url: str,
                                                   redis_storage: RedisStorage) -> None:
    ids = set()
    for i in range(120):
        task = TaskRecord(id=new_id(), tenant="t", kind="workflow", target="w",
                          priority=i % 3)
        await redis_storage.submit_task(task)
        ids.add(task.id)
    outputs = _contend(redis_url, redis_storage, "claim")
    claimed = [tid for out in outputs for tid in out]
    assert sorted(claimed) == sorted(ids)  # every task once, none twice
    assert sum(1 for out in outputs if out) >= 2  # they really contended


async def test_four_processes_share_one_rate_window_and_budget(
        redis_url: str, redis_storage: RedisStorage) -> None:
    outputs = _contend(redis_url, redis_storage, "limits")
    lines = [line for out in outputs for line in out]
    assert lines.count("admitted") == 10  # 120 asks, one 60 s window of 10
    assert lines.count("held") == 8  # 80 tries of 0.125 USD, a 1 USD budget
    state = await redis_storage.shared_budget_state("budget:shared")
    assert state == {"spent_usd": 0.0, "reserved_usd": 1.0}
