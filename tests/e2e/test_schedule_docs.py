"""The Schedules section of docs/workflows.md runs as written: its workflow is saved as
heartbeat.yaml and each of its `flowyard schedule` command lines runs against a SQLite file;
then the section's claims are checked (schedules stored, next fire in the zone, run --once
fires nothing not yet due, a due fire gives one run linked to its schedule).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOWYARD = str(Path(sys.executable).parent / "flowyard")


def section() -> str:
    text = (ROOT / "docs" / "workflows.md").read_text(encoding="utf-8")
    start = text.index("\n## Schedules\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_schedules_section_commands_run_as_written(tmp_path: Path) -> None:
    body = section()
    [workflow] = re.findall(r"```yaml\n(.*?)```", body, re.S)
    [commands] = re.findall(r"```bash\n(.*?)```", body, re.S)
    (tmp_path / "heartbeat.yaml").write_text(workflow)
    env = {**os.environ, "FLOWYARD_STORAGE__URL": f"sqlite:///{tmp_path / 'runs.db'}"}

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, (argv, proc.stderr)
        return proc

    lines = [line.split("#")[0].strip() for line in commands.splitlines()]
    lines = [line for line in lines if line]
    assert len(lines) == 5 and all(line.startswith("flowyard schedule ") for line in lines)
    outputs = [run([FLOWYARD, *shlex.split(line)[1:]]).stdout for line in lines]
    assert outputs[0].startswith("schedule heartbeat: every 60s, next ")
    assert "nightly  cron '30 2 * * *'  tz=Europe/Berlin  catch-up=once" in outputs[2]
    assert outputs[3] == ""  # nothing is due right after adding
    assert outputs[4] == "removed schedule nightly\n"
    [row] = json.loads(run([FLOWYARD, "schedule", "list", "--json"]).stdout)
    assert row["name"] == "heartbeat" and row["inputs"] == {"note": "hello"}

    # the heartbeat anchored in the past, with a cursor as if no scheduler had run since
    # 1970: catch-up once fires the latest due time, one run
    run([FLOWYARD, "schedule", "add", "heartbeat", "heartbeat.yaml", "--every", "1m",
         "-i", "note=hello", "--replace", "--start-at", "2026-01-01T00:00:00+00:00",
         "--catch-up", "once"])
    state_reset = ("import anyio, sys\nfrom flowyard import Stack\n"
                   "async def main():\n"
                   "    async with Stack.default() as st:\n"
                   "        await st.storage.kv_set('schedule.state', 'heartbeat',"
                   " {'cursor': 0.0})\n"
                   "anyio.run(main)\n")
    run([sys.executable, "-c", state_reset])  # as if the scheduler had been down since 1970
    fired = run([FLOWYARD, "schedule", "run", "--once"]).stdout.splitlines()
    assert len(fired) == 1 and fired[0].startswith("heartbeat ") and fired[0].endswith(
        " completed"), fired
    run_id = fired[0].split(" run ")[1].split()[0]
    shown = json.loads(run([FLOWYARD, "runs", "show", run_id, "--json"]).stdout)
    assert shown["run"]["outputs"] == {"said": "heartbeat: hello"}
    assert shown["run"]["metadata"]["schedule"] == "heartbeat"
    when = fired[0].split()[1]
    again = run([FLOWYARD, "schedule", "run", "--once"]).stdout
    assert when not in again  # fired once (a new minute may have begun meanwhile)
