"""Killing the node that runs a step: Ray reruns the step's task on the other node, the
run completes, and steps that completed before are not run again.

This module runs last (file order): it leaves the session's cluster with one node.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import flowyard
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ray_tools


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_killed_node_step_reruns_elsewhere_completed_steps_do_not(
        ray_cluster: Any, ray_config: dict[str, Any], tmp_path: Path) -> None:
    marks, release = tmp_path / "marks", tmp_path / "release"
    marks.mkdir()
    workflow = {"name": "ray-node-loss", "max_concurrency": 2, "steps": [
        {"id": "first", "uses": "t.add", "with": {"a": 1, "b": 1, "marks": str(marks),
                                                  "key": "first"}},
        # one item per node (each node has 1 CPU and each task asks for 1)
        {"id": "work", "uses": "t.slow", "depends_on": ["first"], "for_each": ["x", "y"],
         "with": {"marks": str(marks), "name": "{{ item }}", "release": str(release)}},
        {"id": "last", "uses": "t.add", "depends_on": ["work"],
         "with": {"a": 2, "b": 2, "marks": str(marks), "key": "last"}},
    ]}
    stack = flowyard.Stack([ray_tools], config={**ray_config, "engine": {"executor": "ray"}},
                           discover=True)
    await stack.open()
    results: list[flowyard.RunResult] = []
    try:
        async with anyio.create_task_group() as tg:
            async def run() -> None:
                results.append(await stack.run(workflow, {}))

            tg.start_soon(run)
            deadline = time.monotonic() + 90
            while not all((marks / f"started-{n}").exists() for n in "xy"):
                assert time.monotonic() < deadline, "the two items did not both start"
                await anyio.sleep(0.05)
            started = {n: (marks / f"started-{n}").read_text().split() for n in "xy"}
            nodes = {n: ray_cluster.node_index(s[1]) for n, s in started.items()}
            assert sorted(nodes.values()) == [0, 1], nodes  # one item on each node
            victim = next(n for n, index in nodes.items() if index == 1)
            # the machine of node 1 dies: its raylet and the worker running the item
            ray_cluster.kill_node(1)
            try:
                os.kill(int(started[victim][0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
            release.touch()
            with anyio.fail_after(150):
                while not results:
                    await anyio.sleep(0.1)
    finally:
        await stack.aclose()
    result = results[0]
    assert result.status == "completed", result.error
    assert [o["name"] for o in result.steps["work"].output] == ["x", "y"]
    # the lost item started twice (on node 1, then again on the head) and finished once,
    # on the head; the other item and the steps around ran once
    victim_starts = (marks / f"started-{victim}").read_text().splitlines()
    assert len(victim_starts) == 2
    assert ray_cluster.node_index(victim_starts[1].split()[1]) == 0
    assert len((marks / f"done-{victim}").read_text().splitlines()) == 1
    survivor = "y" if victim == "x" else "x"
    assert len((marks / f"started-{survivor}").read_text().splitlines()) == 1
    assert (marks / "first").read_text().count("\n") == 1
    assert (marks / "last").read_text().count("\n") == 1
