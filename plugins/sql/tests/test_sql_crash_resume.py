"""kill -9 a real ``flowyard run`` mid-workflow, ``flowyard resume`` it, check exactly-once.

The workflow's steps call ``crashtest.work`` (``sql_crash_plugin.py``, discovered through a
generated entry point), which appends the idempotency key it received to a per-step-key file
before sleeping. So after the resume:

- every step key that was checkpointed before the kill has exactly one side effect;
- a step key that was in flight at the kill (a ``running`` attempt in the database) ran again
  with the same idempotency key, and nothing else ran twice;
- the run's outputs and every step output equal those of an uninterrupted run.

The storage is the default stack's SQLite file in ``FLOWYARD_DATA_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

WORKFLOW = """\
name: crash-test
inputs:
  items:
    type: array
    default: [1, 2, 3, 4, 5, 6]
max_concurrency: 3
steps:
  - id: prepare
    uses: crashtest.work
    with: {label: prepare, value: "{{ inputs.items }}", sleep: 0.3}
  - id: each
    uses: crashtest.work
    depends_on: [prepare]
    for_each: "{{ inputs.items }}"
    max_parallel: 2
    with: {label: "each-{{ item }}", value: "{{ steps.prepare.output.digest }}", sleep: 0.5}
  - id: side
    uses: crashtest.work
    with: {label: side, value: "{{ steps.prepare.output.digest }}", sleep: 0.7}
  - id: combine
    uses: crashtest.work
    with: {label: combine, value: "{{ steps.each.output }}", sleep: 0.2}
    depends_on: [each, side]
outputs:
  combined: "{{ steps.combine.output.digest }}"
  side: "{{ steps.side.output }}"
"""
ALL_KEYS = {"prepare", "side", "combine", *(f"each[{i}]" for i in range(6))}

_PLUGIN = Path(__file__).with_name("sql_crash_plugin.py")


def _flowyard() -> str:
    exe = Path(sys.executable).parent / "flowyard"
    assert exe.is_file(), f"the flowyard console script is not installed next to {sys.executable}"
    return str(exe)


class Scenario:
    """One isolated flowyard home with the crash-test plugin installed on PYTHONPATH."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.effects = root / "effects"
        self.data = root / "data"
        site = root / "site"
        for d in (self.effects, self.data, site, root / "config"):
            d.mkdir(parents=True)
        shutil.copy(_PLUGIN, site / "sql_crash_plugin.py")
        info = site / "flowyard_sql_crashtest-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flowyard-sql-crashtest\n"
                                       "Version: 0.0.1\n")
        (info / "entry_points.txt").write_text("[flowyard]\ncrashtest = sql_crash_plugin\n")
        self.workflow = root / "crash.yaml"
        self.workflow.write_text(WORKFLOW)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
        self.env.update({
            "PYTHONPATH": os.pathsep.join([str(site), self.env.get("PYTHONPATH", "")]),
            "FLOWYARD_DATA_DIR": str(self.data),
            "XDG_CONFIG_HOME": str(root / "config"),
            "CRASHTEST_DIR": str(self.effects),
        })
        self.db = self.data / "flowyard.db"

    def flowyard(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_flowyard(), *args], cwd=self.root, env=self.env, text=True,
                              capture_output=True, timeout=timeout)

    def start_run(self) -> subprocess.Popen[str]:
        return subprocess.Popen([_flowyard(), "run", str(self.workflow)], cwd=self.root,
                                env=self.env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db, timeout=30) as conn:
            return conn.execute(sql, params).fetchall()

    def run_id(self) -> str:
        rows = self.query("SELECT id FROM fy_runs")
        assert len(rows) == 1, rows
        return str(rows[0][0])

    def effects_of(self) -> dict[str, list[str]]:
        return {p.name.removesuffix(".effects"): p.read_text().split()
                for p in self.effects.glob("*.effects")}

    def outputs(self, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        (outputs,) = self.query("SELECT outputs FROM fy_runs WHERE id = ?", run_id)[0]
        steps = {k: json.loads(v) for k, v in self.query(
            "SELECT step_key, output FROM fy_checkpoints WHERE run_id = ?", run_id)}
        return json.loads(outputs), steps

    def kill_after_checkpoints(self, count: int) -> str:
        """Start ``flowyard run``, SIGKILL it once ``count`` step keys are checkpointed."""
        proc = self.start_run()
        deadline = time.monotonic() + 60
        try:
            while True:
                assert proc.poll() is None, f"the run ended before the kill: {proc.communicate()}"
                assert time.monotonic() < deadline, "no checkpoints appeared within 60 s"
                if self.db.exists():
                    try:
                        done = self.query("SELECT count(*) FROM fy_checkpoints")[0][0]
                    except sqlite3.OperationalError:  # schema not created yet
                        done = 0
                    if done >= count:
                        break
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            if proc.stdout:
                proc.stdout.close()
            if proc.stderr:
                proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        return self.run_id()


def _idempotency_key(run_id: str, step_key: str) -> str:
    return hashlib.sha256(f"{run_id}:{step_key}".encode()).hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    """Outputs (run outputs, step outputs) of an uninterrupted run."""
    scenario = Scenario(tmp_path_factory.mktemp("reference"))
    done = scenario.flowyard("run", str(scenario.workflow))
    assert done.returncode == 0, done.stderr
    run_id = scenario.run_id()
    assert scenario.query("SELECT status FROM fy_runs")[0][0] == "completed"
    effects = scenario.effects_of()
    assert set(effects) == ALL_KEYS
    assert all(lines == [_idempotency_key(run_id, k)] for k, lines in effects.items())
    return scenario.outputs(run_id)


def test_kill_9_then_resume_runs_completed_steps_exactly_once(
        tmp_path: Path, reference: tuple[dict[str, Any], dict[str, Any]]) -> None:
    scenario = Scenario(tmp_path)
    run_id = scenario.kill_after_checkpoints(3)

    # Not finished (the engine stores "running" only at its next run-record write).
    assert scenario.query("SELECT status FROM fy_runs")[0][0] in ("pending", "running")
    completed_before = {k for (k,) in scenario.query("SELECT step_key FROM fy_checkpoints")}
    in_flight = {k for (k,) in scenario.query(
        "SELECT step_key FROM fy_attempts WHERE status = 'running'")}
    assert len(completed_before) >= 3 and in_flight, (completed_before, in_flight)
    assert not completed_before & in_flight
    effects_before = scenario.effects_of()

    resumed = scenario.flowyard("resume", run_id[:6])  # a unique prefix names the run
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    status, resume_count = scenario.query("SELECT status, resume_count FROM fy_runs")[0]
    assert (status, resume_count) == ("completed", 1)
    effects = scenario.effects_of()
    assert set(effects) == ALL_KEYS
    for key, lines in effects.items():
        # Every call of a step key, first or repeated, carried the same idempotency key.
        assert set(lines) == {_idempotency_key(run_id, key)}, key
        if key in completed_before:
            assert len(lines) == 1, f"completed step {key} ran again"
        elif key in in_flight:
            assert len(lines) == len(effects_before.get(key, [])) + 1, key
        else:
            assert len(lines) == 1, f"step {key} ran {len(lines)} times"
    repeated = {k for k, lines in effects.items() if len(lines) > 1}
    assert repeated == in_flight & set(effects_before)

    # The in-flight attempt is closed and the retry carries the same key with a new number.
    for key in in_flight:
        rows = scenario.query("SELECT attempt, status, idempotency_key FROM fy_attempts "
                              "WHERE step_key = ? ORDER BY attempt", key)
        assert [r[1] for r in rows] == ["cancelled", "completed"], rows
        assert {r[2] for r in rows} == {_idempotency_key(run_id, key)}

    assert scenario.outputs(run_id) == reference


def test_resume_refuses_a_changed_workflow_unless_forced(
        tmp_path: Path, reference: tuple[dict[str, Any], dict[str, Any]]) -> None:
    scenario = Scenario(tmp_path)
    run_id = scenario.kill_after_checkpoints(1)
    scenario.workflow.write_text(WORKFLOW.replace("sleep: 0.2", "sleep: 0.1"))
    refused = scenario.flowyard("resume", run_id)
    assert refused.returncode != 0
    assert "changed" in (refused.stdout + refused.stderr)
    assert scenario.query("SELECT status FROM fy_runs")[0][0] in ("pending", "running")
    forced = scenario.flowyard("resume", run_id, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert scenario.query("SELECT status FROM fy_runs")[0][0] == "completed"
    assert scenario.outputs(run_id) == reference


def test_a_run_that_keeps_crashing_is_marked_failed(tmp_path: Path) -> None:
    scenario = Scenario(tmp_path)
    scenario.env["FLOWYARD_RUNS__MAX_RESUME_ATTEMPTS"] = "1"
    run_id = scenario.kill_after_checkpoints(1)
    # First resume: allowed; kill it again once it has made progress.
    proc = subprocess.Popen([_flowyard(), "resume", run_id], cwd=scenario.root, env=scenario.env,
                            text=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while scenario.query("SELECT resume_count FROM fy_runs")[0][0] < 1:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    refused = scenario.flowyard("resume", run_id)
    assert refused.returncode != 0
    assert "max_resume_attempts" in refused.stdout + refused.stderr
    status, error = scenario.query("SELECT status, error FROM fy_runs")[0]
    assert status == "failed" and "resumed 1 times" in error
