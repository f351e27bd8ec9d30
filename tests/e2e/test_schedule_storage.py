"""flowyard-schedule against real storage (SQLite files and PostgreSQL): the CLI round trip,
schedulers racing in separate OS processes, and lease takeover after SIGKILL.

Each due time must give exactly one run: the lease lets one scheduler fire at a time, and
the idempotency key ``schedule:<name>:<UTC time>`` makes the storage create one run per
fire even when schedulers fire the same times at once (the lease switched off).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from flowyard import RunQuery, Stack
from flowyard_schedule.scheduler import LEASE_RUN_ID

ROOT = Path(__file__).resolve().parents[2]
FLOWYARD = str(Path(sys.executable).parent / "flowyard")

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


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh SQLite file or PostgreSQL database."""
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        return str(server.url(server.create_database()))
    return f"sqlite:///{tmp_path / 'runs.db'}"


@pytest.fixture
def workflow(tmp_path: Path) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(WORKFLOW)
    return path


def cli(url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([FLOWYARD, "schedule", *args], capture_output=True, text=True,
                          env={**os.environ, "FLOWYARD_STORAGE__URL": url}, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def with_storage(url: str, fn: Callable[[Any], Any]) -> Any:
    async def main() -> Any:
        async with Stack.default(config={"storage": {"url": url}}) as stack:
            return await fn(stack.storage)

    return anyio.run(main)


def scheduled_runs(url: str, name: str) -> list[Any]:
    async def go(storage: Any) -> list[Any]:
        runs = await storage.list_runs(RunQuery(limit=1000))
        return [r for r in runs if r.metadata.get("schedule") == name]

    return with_storage(url, go)


def lease_pid(url: str) -> int | None:
    async def go(storage: Any) -> int | None:
        lease = (await storage.get_leases([LEASE_RUN_ID])).get(LEASE_RUN_ID)
        return None if lease is None or lease.expired(time.time()) else lease.pid

    return with_storage(url, go)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def test_cli_add_list_pause_remove_round_trip(storage_url: str, workflow: Path) -> None:
    out = cli(storage_url, "add", "nightly", str(workflow), "--cron", "30 2 * * *",
              "--tz", "Europe/Berlin", "--catch-up", "once", "-i", "n=4").stdout
    assert out.startswith("schedule nightly: cron '30 2 * * *' (Europe/Berlin), next ")
    cli(storage_url, "add", "tick", str(workflow), "--every", "10m", "--inputs", '{"n": 2}')
    rows = {r["name"]: r for r in json.loads(cli(storage_url, "list", "--json").stdout)}
    assert set(rows) == {"nightly", "tick"}
    nightly = rows["nightly"]
    assert nightly["cron"] == "30 2 * * *" and nightly["catch_up"] == "once"
    assert nightly["inputs"] == {"n": 4} and nightly["last_status"] is None
    assert nightly["next"].endswith(("+01:00", "+02:00")) and "T02:30:00" in nightly["next"]
    assert rows["tick"]["every_s"] == 600 and rows["tick"]["workflow_changed"] is False
    again = cli(storage_url, "add", "tick", str(workflow), "--every", "1m", check=False)
    assert again.returncode == 1 and "schedule 'tick' exists" in again.stderr
    cli(storage_url, "pause", "tick")
    assert json.loads(cli(storage_url, "list", "--json").stdout)[1]["paused"] is True
    workflow.write_text(WORKFLOW.replace("* 2", "* 3"))
    assert "(changed since added)" in cli(storage_url, "list").stdout
    cli(storage_url, "remove", "tick")
    assert [r["name"] for r in json.loads(cli(storage_url, "list", "--json").stdout)] == [
        "nightly"]
    gone = cli(storage_url, "remove", "tick", check=False)
    assert gone.returncode == 1 and "no schedule 'tick'" in gone.stderr


@pytest.mark.parametrize("args, message", [
    (["a/b", "--every", "1m"], "schedule name 'a/b' is invalid"),
    (["it's", "--every", "1m"], "schedule name \"it's\" is invalid"),
    (["x", "--cron", "61 * * * *"], "cron: '61 * * * *' is not a cron expression"),
    (["x", "--every", "soon"], "every: 'soon' is not an interval"),
    (["x", "--every", "1m", "--tz", "Mars/Base"], "tz: 'Mars/Base' is not an IANA time zone"),
    (["x", "--every", "1m", "--cron", "* * * * *"], "exactly one of --cron and --every"),
    (["x", "--every", "1m", "-i", "n=abc"], "input 'n' must be of type integer"),
    (["x", "--every", "1m", "--inputs", "[1]"], "must be a JSON object"),
    (["x", "--every", "1m", *[f"--input=p{i}={'x' * 100_000}" for i in range(3)]],
     "inputs: 300"),  # 3 arguments: one argument is at most 128 KiB on Linux
])
def test_cli_refuses_bad_input_naming_the_field(tmp_path: Path, workflow: Path,
                                                args: list[str], message: str) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    name, *rest = args
    proc = cli(url, "add", name, str(workflow), *rest, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[:2000]
    assert len(proc.stderr) < 2000  # a huge value is not echoed back
    assert json.loads(cli(url, "list", "--json").stdout) == []


RACER = """
import sys, time, anyio
from pathlib import Path
from flowyard import Stack
from flowyard_schedule import Scheduler
url, go_file, now = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
async def main():
    async with Stack.default(config={"storage": {"url": url}}) as stack:
        await stack.open()
        Path(sys.argv[4]).write_text("ready")
        deadline = time.monotonic() + 60
        while not go_file.exists():
            assert time.monotonic() < deadline, "no go file"
            await anyio.sleep(0.01)
        outcomes = await Scheduler(stack, clock=lambda: now, use_lease=False).fire_due()
        print(len({o.run_id for o in outcomes if o.run_id}), len(outcomes))
anyio.run(main)
"""


def test_racing_schedulers_without_lease_create_one_run_per_fire(
        storage_url: str, workflow: Path, tmp_path: Path) -> None:
    start = float(math.floor(time.time())) + 5  # after the schedule's creation
    cli(storage_url, "add", "race", str(workflow), "--every", "1s", "--catch-up", "all",
        "--start-at", time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(start)))
    now = start + 29  # 30 due times, both racers fire all of them at once
    go = tmp_path / "go"
    env = {**os.environ, "FLOWYARD_STORAGE__URL": storage_url}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, storage_url, str(go), str(now),
                               str(tmp_path / f"ready{i}")], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(2)]
    try:
        def ready() -> bool:
            for p in procs:
                assert p.poll() is None, p.communicate()[1][-2000:]
            return all((tmp_path / f"ready{i}").exists() for i in range(2))

        wait_for("both racers ready", ready)
        go.write_text("go")
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.split() == ["30", "30"], (out, err)  # each found every fire's run
    runs = scheduled_runs(storage_url, "race")
    fired = sorted(r.metadata["scheduled_for"] for r in runs)
    assert len(fired) == 30 and len(set(fired)) == 30
    assert {r.status for r in runs} == {"completed"}

    async def attempts(storage: Any) -> list[int]:
        return [len(await storage.list_attempts(r.id)) for r in runs]

    assert with_storage(storage_url, attempts) == [1] * 30  # no step ran twice


def test_two_scheduler_processes_fire_each_time_once_and_take_over_after_sigkill(
        storage_url: str, workflow: Path, tmp_path: Path) -> None:
    start = float(math.ceil(time.time())) + 1
    cli(storage_url, "add", "beat", str(workflow), "--every", "1s", "--catch-up", "all",
        "--start-at", time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(start)))
    env = {**os.environ, "FLOWYARD_STORAGE__URL": storage_url}
    logs = [tmp_path / f"scheduler{i}.log" for i in range(2)]
    procs = [subprocess.Popen([FLOWYARD, "schedule", "run", "--poll-s", "0.2",
                               "--lease-s", "1.5"], env=env, stdout=subprocess.DEVNULL,
                              stderr=log.open("w")) for log in logs]
    try:
        wait_for("three fires", lambda: len(scheduled_runs(storage_url, "beat")) >= 3)
        holder = wait_for("a lease holder", lambda: lease_pid(storage_url))
        assert holder in {p.pid for p in procs}
        killed = next(p for p in procs if p.pid == holder)
        survivor = next(p for p in procs if p.pid != holder)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        killed_at = time.time()
        wait_for("the survivor to hold the lease", lambda: lease_pid(storage_url) == survivor.pid)
        wait_for("fires after the takeover", lambda: any(
            time.mktime(time.strptime(r.metadata["scheduled_for"][:19], "%Y-%m-%dT%H:%M:%S"))
            - time.timezone > killed_at + 2 for r in scheduled_runs(storage_url, "beat")))
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(timeout=30) == 0, logs[procs.index(survivor)].read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    runs = scheduled_runs(storage_url, "beat")
    fired = sorted(r.metadata["scheduled_for"] for r in runs)
    assert len(fired) == len(set(fired)), "a time fired twice"
    seconds = [time.mktime(time.strptime(f[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
               for f in fired]
    # one run per second from the start, none missing across the takeover (catch-up all)
    assert seconds == [start + k for k in range(len(seconds))], fired
    # a run the SIGKILL interrupted stayed pending in the schedule's state: the survivor
    # fired it again and its idempotency key led to the abandoned run, which was resumed
    assert {r.status for r in runs} == {"completed"}, [(r.id, r.status) for r in runs]

    async def state(storage: Any) -> Any:
        return await storage.kv_get("schedule.state", "beat")

    assert with_storage(storage_url, state)["pending"] == []


def test_run_once_fires_nothing_while_another_scheduler_holds_the_lease(
        storage_url: str, workflow: Path, tmp_path: Path) -> None:
    start = float(math.ceil(time.time())) + 1
    cli(storage_url, "add", "held", str(workflow), "--every", "1s", "--catch-up", "all",
        "--start-at", time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(start)))
    env = {**os.environ, "FLOWYARD_STORAGE__URL": storage_url}
    loop = subprocess.Popen([FLOWYARD, "schedule", "run", "--poll-s", "0.5"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("the loop to hold the lease", lambda: lease_pid(storage_url) == loop.pid)
        wait_for("a fire", lambda: scheduled_runs(storage_url, "held"))
        listed = cli(storage_url, "list").stdout
        assert listed.startswith("scheduler: scheduler:") and f"(pid {loop.pid} on " in listed
        once = cli(storage_url, "run", "--once")
        assert once.stdout == ""
        assert "another scheduler (scheduler:" in once.stderr
        assert f":{loop.pid}:" in once.stderr and "holds the lease until" in once.stderr
        loop.send_signal(signal.SIGTERM)
        assert loop.wait(timeout=30) == 0
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    assert lease_pid(storage_url) is None  # released on SIGTERM: a successor starts at once
    assert cli(storage_url, "list").stdout.startswith("scheduler: none running")
