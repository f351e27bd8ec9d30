"""Crashes on Redis storage: kill -9 a real ``flowyard run``, and kill -9 redis-server itself.

The workflow's steps call ``crashtest.work`` (``redis_crash_plugin.py``, discovered through a
generated entry point), which appends the idempotency key it received to a per-step-key file
before sleeping (the side effect). The storage is ``FLOWYARD_STORAGE_URL=redis://...`` with a
key prefix per scenario.

1. ``flowyard run`` is SIGKILLed once 3 step keys are checkpointed; ``flowyard resume``
   finishes it: checkpointed keys never run again, the in-flight ones run again with the same
   idempotency key, and the outputs equal an uninterrupted run's.
2. redis-server (``appendfsync always``) is SIGKILLed mid-run, then the run's process; Redis
   is started again on the same data directory (it replays its append-only file) and
   ``flowyard resume`` finishes the run: every checkpoint Redis acknowledged before the kill
   is there and its step does not run again.
3. With the append-only file off (RDB snapshots off too), the same Redis crash loses every
   write: what the docs say about running without AOF.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flowyard import new_id
from flowyard_redis.testing import RedisServer

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

_PLUGIN = Path(__file__).with_name("redis_crash_plugin.py")


def _flowyard() -> str:
    exe = Path(sys.executable).parent / "flowyard"
    assert exe.is_file(), f"the flowyard console script is not installed next to {sys.executable}"
    return str(exe)


def _idempotency_key(run_id: str, step_key: str) -> str:
    return hashlib.sha256(f"{run_id}:{step_key}".encode()).hexdigest()


class Scenario:
    """One isolated flowyard home on a Redis key prefix, with the crash-test plugin."""

    def __init__(self, root: Path, server: RedisServer) -> None:
        self.root = root
        self.server = server
        self.prefix = f"crash{new_id()[:10]}:"
        self.effects = root / "effects"
        site = root / "site"
        for d in (self.effects, root / "data", site, root / "config"):
            d.mkdir(parents=True)
        shutil.copy(_PLUGIN, site / "redis_crash_plugin.py")
        info = site / "flowyard_redis_crashtest-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flowyard-redis-crashtest\n"
                                       "Version: 0.0.1\n")
        (info / "entry_points.txt").write_text("[flowyard]\ncrashtest = redis_crash_plugin\n")
        self.workflow = root / "crash.yaml"
        self.workflow.write_text(WORKFLOW)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
        self.env.update({
            "PYTHONPATH": os.pathsep.join([str(site), self.env.get("PYTHONPATH", "")]),
            "FLOWYARD_DATA_DIR": str(root / "data"),
            "FLOWYARD_STORAGE_URL": f"{server.url}?prefix={self.prefix}",
            "XDG_CONFIG_HOME": str(root / "config"),
            "CRASHTEST_DIR": str(self.effects),
        })

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url, decode_responses=True)

    def flowyard(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_flowyard(), *args], cwd=self.root, env=self.env, text=True,
                              capture_output=True, timeout=timeout)

    def run_id(self) -> str:
        with self.client() as c:
            ids = c.zrange(f"{self.prefix}runs", 0, -1)
        assert len(ids) == 1, ids
        return str(ids[0])

    def run(self, run_id: str) -> dict[str, Any]:
        with self.client() as c:
            return json.loads(c.get(f"{self.prefix}run:{run_id}"))

    def checkpoints(self, run_id: str) -> dict[str, Any]:
        with self.client() as c:
            return {k: json.loads(v) for k, v in c.hgetall(f"{self.prefix}ckpt:{run_id}").items()}

    def attempts(self, run_id: str) -> list[dict[str, Any]]:
        with self.client() as c:
            return [json.loads(v) for v in c.hvals(f"{self.prefix}att:{run_id}")]

    def effects_of(self) -> dict[str, list[str]]:
        return {p.name.removesuffix(".effects"): p.read_text().split()
                for p in self.effects.glob("*.effects")}

    def outputs(self, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.run(run_id)["outputs"], self.checkpoints(run_id)

    def start_run(self) -> subprocess.Popen[str]:
        return subprocess.Popen([_flowyard(), "run", str(self.workflow)], cwd=self.root,
                                env=self.env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def wait_for_checkpoints(self, proc: subprocess.Popen[str], count: int) -> set[str]:
        """Poll Redis until the run has ``count`` checkpoints; return their step keys."""
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the run ended before the kill: {proc.communicate()}"
            assert time.monotonic() < deadline, "no checkpoints appeared within 60 s"
            with self.client() as c:
                ids = c.zrange(f"{self.prefix}runs", 0, -1)
                done = set(c.hkeys(f"{self.prefix}ckpt:{ids[0]}")) if ids else set()
            if len(done) >= count:
                return done
            time.sleep(0.02)  # polling interval

    @staticmethod
    def kill(proc: subprocess.Popen[str]) -> None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended by itself (after its storage went away)
            pass
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


@pytest.fixture(scope="module")
def crash_server() -> Iterator[RedisServer]:
    """A redis-server of this module's own (the Redis crash test kills it)."""
    server = RedisServer(appendfsync="always")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, crash_server: RedisServer
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Outputs (run outputs, step outputs) of an uninterrupted run."""
    scenario = Scenario(tmp_path_factory.mktemp("reference"), crash_server)
    done = scenario.flowyard("run", str(scenario.workflow))
    assert done.returncode == 0, done.stderr
    run_id = scenario.run_id()
    assert scenario.run(run_id)["status"] == "completed"
    effects = scenario.effects_of()
    assert set(effects) == ALL_KEYS
    assert all(lines == [_idempotency_key(run_id, k)] for k, lines in effects.items())
    return scenario.outputs(run_id)


def test_kill_9_then_resume_runs_completed_steps_exactly_once(
        tmp_path: Path, crash_server: RedisServer,
        reference: tuple[dict[str, Any], dict[str, Any]]) -> None:
    scenario = Scenario(tmp_path, crash_server)
    proc = scenario.start_run()
    scenario.wait_for_checkpoints(proc, 3)
    scenario.kill(proc)
    assert proc.returncode == -signal.SIGKILL
    run_id = scenario.run_id()

    assert scenario.run(run_id)["status"] in ("pending", "running")
    completed_before = set(scenario.checkpoints(run_id))
    in_flight = {a["step_key"] for a in scenario.attempts(run_id) if a["status"] == "running"}
    assert len(completed_before) >= 3 and in_flight, (completed_before, in_flight)
    assert not completed_before & in_flight
    effects_before = scenario.effects_of()

    resumed = scenario.flowyard("resume", run_id[:6])  # a unique prefix names the run
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    run = scenario.run(run_id)
    assert (run["status"], run["resume_count"]) == ("completed", 1)
    effects = scenario.effects_of()
    assert set(effects) == ALL_KEYS
    for key, lines in effects.items():
        assert set(lines) == {_idempotency_key(run_id, key)}, key
        if key in completed_before:
            assert len(lines) == 1, f"completed step {key} ran again"
        elif key in in_flight:
            assert len(lines) == len(effects_before.get(key, [])) + 1, key
        else:
            assert len(lines) == 1, f"step {key} ran {len(lines)} times"
    assert {k for k, lines in effects.items() if len(lines) > 1} == (
        in_flight & set(effects_before))
    for key in in_flight:
        rows = sorted((a for a in scenario.attempts(run_id) if a["step_key"] == key),
                      key=lambda a: a["attempt"])
        assert [r["status"] for r in rows] == ["cancelled", "completed"], rows
    assert scenario.outputs(run_id) == reference


def test_redis_kill_9_keeps_acknowledged_checkpoints_and_the_run_resumes(
        tmp_path: Path, crash_server: RedisServer,
        reference: tuple[dict[str, Any], dict[str, Any]]) -> None:
    scenario = Scenario(tmp_path, crash_server)
    proc = scenario.start_run()
    acknowledged = scenario.wait_for_checkpoints(proc, 3)
    run_id = scenario.run_id()
    crash_server.kill()  # Redis dies first: the run's next writes fail
    scenario.kill(proc)
    crash_server.restart()  # replays the append-only file before it answers PING

    after = scenario.checkpoints(run_id)
    assert acknowledged <= set(after), (acknowledged, set(after))
    assert scenario.run(run_id)["status"] in ("pending", "running")
    resumed = scenario.flowyard("resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert scenario.run(run_id)["status"] == "completed"
    effects = scenario.effects_of()
    assert set(effects) == ALL_KEYS
    for key in after:
        assert len(effects[key]) == 1, f"step {key} checkpointed before the crash ran again"
    assert scenario.outputs(run_id) == reference


@pytest.mark.anyio
async def test_without_the_append_only_file_a_redis_crash_loses_everything(
        tmp_path: Path) -> None:
    from flowyard import RunNotFoundError, RunRecord
    from flowyard_redis.storage import RedisStorage

    server = RedisServer(appendonly=False, data_dir=tmp_path / "redis")
    server.start()
    try:
        storage = RedisStorage(server.url)
        await storage.open()
        run = RunRecord(id=new_id(), workflow_name="lost")
        await storage.create_run(run)
        assert (await storage.get_run(run.id)).id == run.id
        server.kill()
        server.restart()
        # the pooled connection died with the server: the read reconnects, and finds nothing
        with pytest.raises(RunNotFoundError):
            await storage.get_run(run.id)
        await storage.close()
    finally:
        server.stop()


@pytest.fixture
def anyio_backend() -> str:
    """The no-AOF check runs once (asyncio); the crash behaviour does not depend on it."""
    return "asyncio"


@pytest.mark.anyio
async def test_everysec_survives_a_redis_process_crash(tmp_path: Path) -> None:
    """The process-crash column of the docs' durability table for ``everysec``: Redis
    ``write()``s the AOF before it replies, so a SIGKILL of redis-server alone loses nothing
    acknowledged (only an OS crash or power loss loses the unsynced second).
    """
    from flowyard import RunRecord
    from flowyard_redis.storage import RedisStorage

    server = RedisServer(appendfsync="everysec", data_dir=tmp_path / "redis")
    server.start()
    try:
        storage = RedisStorage(server.url)
        await storage.open()
        runs = [RunRecord(id=new_id(), workflow_name="kept") for _ in range(50)]
        for run in runs:
            await storage.create_run(run)
            await storage.save_checkpoint(run.id, "a", {"n": 1})
        server.kill()
        server.restart()
        for run in runs:
            assert (await storage.get_run(run.id)).id == run.id
            assert await storage.load_checkpoints(run.id) == {"a": {"n": 1}}
        await storage.close()
    finally:
        server.stop()
