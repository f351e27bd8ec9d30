"""flowyard-ray end to end on a two-node local Ray cluster (``ray start``) with SQLite storage
(flowyard-sql): the driver SIGKILLed mid-run and the run resumed without rerunning completed
steps, and the main job's fan-out (examples/python-docs-qa, the local SmolLM2 model) with
every step on the ray executor.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "contrib" / "ray" / "tests"  # ray_tools: the test tools of flowyard-ray
FLOWYARD = Path(sys.executable).parent / "flowyard"

DRIVER = r'''
import json, sys
import anyio
import flowyard
import ray_tools

mode, run_id, config_json, marks, release = sys.argv[1:6]
config = json.loads(config_json)
workflow = {"name": "ray-resume", "steps": [
    {"id": "first", "uses": "t.add", "with": {"a": 1, "b": 1, "marks": marks, "key": "first"}},
    {"id": "slow", "uses": "t.slow", "depends_on": ["first"],
     "with": {"marks": marks, "name": "slow", "release": release}},
    {"id": "last", "uses": "t.add", "depends_on": ["slow"],
     "with": {"a": "${first.sum}", "b": 2, "marks": marks, "key": "last"}},
], "outputs": {"last": "${last.sum}"}}

async def main():
    stack = flowyard.Stack([ray_tools], config=config, discover=True)
    await stack.open()
    try:
        if mode == "run":
            result = await stack.run(workflow, {}, run_id=run_id)
        else:
            result = await stack.resume(run_id)
        print(json.dumps({"status": result.status, "error": result.error,
                          "outputs": result.outputs, "resume_count": result.resume_count}))
    finally:
        await stack.aclose()

anyio.run(main)
'''


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A two-node local Ray cluster (1 CPU per node) whose workers import ``ray_tools``."""
    from flowyard_ray.testing import LocalCluster

    pythonpath = os.pathsep.join(p for p in (str(TOOLS), os.environ.get("PYTHONPATH")) if p)
    with LocalCluster(nodes=2, num_cpus=1, env={"PYTHONPATH": pythonpath}) as local:
        yield local


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    env.update({"FLOWYARD_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1",
                "ANONYMIZED_TELEMETRY": "False", "RAY_USAGE_STATS_ENABLED": "0",
                "PYTHONPATH": os.pathsep.join(p for p in (str(TOOLS),
                                                          os.environ.get("PYTHONPATH")) if p)})
    return env


def test_driver_killed_mid_run_then_resume_reruns_only_the_unfinished_step(
        cluster: Any, tmp_path: Path) -> None:
    marks, release = tmp_path / "marks", tmp_path / "release"
    marks.mkdir()
    config = {"storage": {"url": f"sqlite:///{tmp_path / 'runs.db'}"},
              "plugins": {"enabled": ["builtin", "sql", "ray", "ray_tools"]},
              "engine": {"executor": "ray"},
              "ray": {"address": cluster.address, "plugins": ["ray_tools"]}}
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    run_id = "ray-resume-run"
    args = [json.dumps(config), str(marks), str(release)]
    driver = subprocess.Popen([sys.executable, str(script), "run", run_id, *args],
                              env=_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (marks / "started-slow").exists():
            assert driver.poll() is None, driver.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "the slow step did not start on Ray"
            time.sleep(0.05)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.communicate(timeout=30)
    # Ray stops the tasks of a driver that died
    worker_pid = int((marks / "started-slow").read_text().split()[0])
    deadline = time.monotonic() + 60
    while Path(f"/proc/{worker_pid}").exists():
        assert time.monotonic() < deadline, "the dead driver's task kept running"
        time.sleep(0.1)
    assert not (marks / "done-slow").exists()
    release.touch()

    resumed = subprocess.run([sys.executable, str(script), "resume", run_id, *args],
                             env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed", result
    assert result["outputs"] == {"last": 4}
    assert result["resume_count"] == 1
    assert (marks / "first").read_text().count("\n") == 1  # checkpointed: not run again
    assert len((marks / "started-slow").read_text().splitlines()) == 2  # in flight: again
    assert len((marks / "done-slow").read_text().splitlines()) == 1
    assert (marks / "last").read_text().count("\n") == 1


def test_main_job_fan_out_runs_on_the_two_node_cluster(cluster: Any, tmp_path: Path) -> None:
    env = _env(tmp_path)
    env.update({"FLOWYARD_FILESYSTEM__ROOT": str(tmp_path / "out"),
                "FLOWYARD_ENGINE__EXECUTOR": "ray", "FLOWYARD_RAY__ADDRESS": cluster.address})
    proc = subprocess.run(
        [str(FLOWYARD), "run", str(ROOT / "examples" / "python-docs-qa" / "workflow.yaml"),
         "-i", "max_questions=2", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "completed"
    assert result["outputs"]["answered"] == 2
    text = Path(result["outputs"]["report"]).read_text()
    assert re.findall(r"^## \d+\. (.+)$", text, flags=re.M) == [
        'What does the "global" statement do?',
        'How does a "with" statement use a context manager?']
    # the fan-out's sub-workflows ran in Ray actors, not in the driver: their llm.call
    # events came back with the step's events
    import sqlite3

    db = sqlite3.connect(tmp_path / "data" / "flowyard.db")
    try:
        calls = db.execute("select count(*) from fy_costs where run_id != ?",
                           (result["run_id"],)).fetchone()[0]
        audited = dict(db.execute(
            "select step_id, count(*) from fy_audit where run_id = ? and action = 'tool.call'"
            " group by step_id", (result["run_id"],)).fetchall())
    finally:
        db.close()
    assert calls >= 2
    # each tool call of the run is in the shared audit log once (from the driver), not
    # also from the worker that made it
    assert audited.get("index") == 1 and audited.get("report") == 1, audited
