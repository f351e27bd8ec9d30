"""Human steps on real storage (SQLite file and PostgreSQL): examples/approval/approval.yaml
started in one OS process ends ``waiting`` and the process exits (no lease held); answers
given from other processes through ``flowyard runs answer ... --json`` resume it where it
stopped and it completes, the completed steps not run again; hostile answers (schema
violations, a huge value, a wrong step, an answered step, a run not waiting) are clear
errors that store nothing; who answered is in the outputs, the events and the audit log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from flowyard import Stack

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "approval" / "approval.yaml"
FLOWYARD = [sys.executable, "-c", "from flowyard.cli import main; main()"]

START = """
import json, sys
from flowyard import Stack
stack = Stack.default()
result = stack.run_sync(sys.argv[1], {"title": "Notes"})
print(json.dumps({"run_id": result.run_id, "status": result.status,
                  "waiting": [s.id for s in result.steps.values() if s.status == "waiting"]}))
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    pg = request.getfixturevalue("postgres_server")
    return str(pg.url(pg.create_database()))


def _run(args: list[str], url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLOWYARD_STORAGE_URL": url, "COLUMNS": "200"}
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def _answer(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run([*FLOWYARD, "runs", "answer", *args], url, cwd)


async def _inspect(url: str, run_id: str) -> dict[str, Any]:
    async with Stack.default(config={"storage": {"url": url}}) as stack:
        storage = stack.storage
        record = await storage.get_run(run_id)
        lease = (await storage.get_leases([run_id])).get(run_id)
        attempts = await storage.list_attempts(run_id)
        events = await storage.list_events(run_id)
        audit = [r async for r in _audit(storage)]
        return {"record": record, "lease": lease, "attempts": attempts, "events": events,
                "audit": audit}


async def _audit(storage: Any) -> Any:
    for record in await storage.list_audit():
        if record.action == "human.answered":
            yield record


def test_waiting_run_survives_the_process_and_is_answered_from_others(
        storage_url: str, tmp_path: Path) -> None:
    started = _run([sys.executable, "-c", START, str(EXAMPLE)], storage_url, tmp_path)
    assert started.returncode == 0, started.stderr
    first = json.loads(started.stdout.strip().splitlines()[-1])
    run_id = first["run_id"]
    assert first["status"] == "waiting" and first["waiting"] == ["audience"]

    # the process is gone: the run is stored waiting with its prompt, and holds no live lease
    state = anyio.run(_inspect, storage_url, run_id)
    record = state["record"]
    assert record.status == "waiting"
    request = record.metadata["human"]["waiting"]["audience"]
    assert request["prompt"] == "Who should receive Draft of Notes?"
    assert request["schema"]["required"] == ["team"]
    assert request["deadline"] is not None and request["has_default"] is True
    assert state["lease"] is None  # released: no process is held while it waits

    # hostile answers: refused with a clear message, exit status 1, nothing stored
    refused = [
        (["audience", "--json", '{"team": "sales"}'], "does not match its schema at team"),
        (["audience", "--json", '{"team": "everyone", "x": 1}'], "does not match its schema"),
        (["audience", "--json", "{not json"], "not valid JSON"),
        (["review", "--approve"], "is not waiting for an answer (waiting: audience)"),
        (["nosuchstep", "--json", "1"], "is not waiting for an answer"),
    ]
    for args, message in refused:
        done = _answer(storage_url, tmp_path, run_id, *args)
        assert done.returncode != 0, (args, done.stdout)
        assert message in done.stderr, (args, done.stderr)
    huge = _run([sys.executable, "-c", (
        "import sys, anyio\n"
        "from flowyard import Stack\n"
        "from flowyard.engine.human import HumanAnswerError\n"
        "async def main():\n"
        "    async with Stack.default() as stack:\n"
        "        try:\n"
        "            await stack.answer(sys.argv[1], 'audience', {'team': 'x' * 2_000_000},\n"
        "                               actor='user:mallory')\n"
        "        except HumanAnswerError as exc:\n"
        "            print(exc)\n"
        "anyio.run(main)\n"), run_id], storage_url, tmp_path)
    assert "more than human.max_answer_bytes (1000000)" in huge.stdout, huge.stderr
    state = anyio.run(_inspect, storage_url, run_id)
    assert state["record"].status == "waiting"
    assert state["record"].metadata == record.metadata
    assert not [e for e in state["events"] if e.type == "human.answered"]

    # answered from another process: it resumes, reaches the approval and waits again
    done = _answer(storage_url, tmp_path, run_id[:10], "audience", "--json",
                   '{"team": "everyone"}', "--actor", "user:ann")
    assert done.returncode == 0, done.stderr
    assert "the run is now waiting" in done.stdout and "still waiting: review" in done.stdout
    again = _answer(storage_url, tmp_path, run_id, "audience", "--json", '{"team": "everyone"}')
    assert again.returncode == 1 and "already answered by 'user:ann'" in again.stderr

    done = _answer(storage_url, tmp_path, run_id, "review", "--json",
                   '{"approved": true, "comment": "ship it"}', "--actor", "user:bob")
    assert done.returncode == 0, done.stderr
    assert "the run is now completed" in done.stdout

    state = anyio.run(_inspect, storage_url, run_id)
    record = state["record"]
    assert record.status == "completed" and record.resume_count == 0
    assert record.outputs == {"published": "Draft of Notes published to everyone, approved "
                                           "by user:bob", "comment": "ship it"}
    by_step: dict[str, list[str]] = {}
    for attempt in state["attempts"]:
        by_step.setdefault(attempt.step_id, []).append(attempt.status)
    assert by_step["draft"] == ["completed"]  # not run again by either resume
    assert by_step["audience"] == ["waiting", "completed"]
    assert by_step["review"] == ["waiting", "completed"]
    assert by_step["publish"] == ["completed"]
    answered = [(e.step_id, e.data["by"]) for e in state["events"]
                if e.type == "human.answered"]
    assert answered == [("audience", "user:ann"), ("review", "user:bob")]
    seqs = [e.seq for e in state["events"]]
    assert seqs == sorted(set(seqs))
    assert [(r.actor, r.step_id) for r in state["audit"]] == [
        ("user:ann", "audience"), ("user:bob", "review")]

    late = _answer(storage_url, tmp_path, run_id, "review", "--reject")
    assert late.returncode == 1 and f"run {run_id} is completed, not waiting" in late.stderr


def test_expired_waits_take_the_default_from_another_process(storage_url: str,
                                                             tmp_path: Path) -> None:
    workflow = tmp_path / "timed.yaml"
    workflow.write_text(
        "name: timed\n"
        "steps:\n"
        "  - id: ok\n"
        "    uses: human.approve\n"
        "    with: {prompt: 'go?', timeout_s: 1, default: false}\n"
        "  - id: after\n"
        "    uses: echo\n"
        "    with: {value: '{{ steps.ok.output.approved }} by {{ steps.ok.output.by }}'}\n"
        "outputs: {after: '{{ steps.after.output }}'}\n")
    started = _run([sys.executable, "-c", START.replace('{"title": "Notes"}', "{}"),
                    str(workflow)], storage_url, tmp_path)
    assert started.returncode == 0, started.stderr
    first = json.loads(started.stdout.strip().splitlines()[-1])
    run_id = first["run_id"]
    assert first["status"] == "waiting"
    deadline = anyio.run(_inspect, storage_url, run_id)["record"].metadata["human"][
        "waiting"]["ok"]["deadline"]
    while time.time() <= deadline:  # the wall clock passes the step's deadline
        time.sleep(0.05)
    swept = _answer(storage_url, tmp_path, "--expired")
    assert swept.returncode == 0, swept.stderr
    assert f"expired: run {run_id} step ok" in swept.stdout
    state = anyio.run(_inspect, storage_url, run_id)
    assert state["record"].status == "completed"
    assert state["record"].outputs == {"after": "False by flowyard:timeout"}
