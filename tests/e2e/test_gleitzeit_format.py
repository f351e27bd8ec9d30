"""Gleitzeit workflow files (contrib/gleitzeit-format/examples) that need other distributions
than the core and flowyard-gleitzeit-format: python/execute runs on flowyard-exec's
`python.run`, the client's sqlite persistence on flowyard-sql. Run through the `flowyard`
command line on the fake provider, with exact expected outputs; the plugin's own tests cover
the examples that need only the core."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flowyard_gleitzeit_format.client import GleitzeitClient

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "contrib" / "gleitzeit-format" / "examples"
FLOWYARD = Path(sys.executable).parent / "flowyard"
CONFIG = {"models": {"default": "fake/echo"}, "gleitzeit": {"provider": ""}}


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    target = tmp_path / "examples"
    shutil.copytree(EXAMPLES, target)
    return target


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    out.update({"FLOWYARD_DEFAULT_MODEL": "fake/echo", "FLOWYARD_GLEITZEIT__PROVIDER": "",
                "FLOWYARD_STORAGE_URL": "memory://", "FLOWYARD_DATA_DIR": str(tmp_path / "d"),
                "XDG_CONFIG_HOME": str(tmp_path / "config")})
    return out


def run(name: str, examples: Path, env: dict[str, str]) -> tuple[int, dict]:
    checked = subprocess.run([str(FLOWYARD), "validate", name], cwd=examples, env=env,
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    proc = subprocess.run([str(FLOWYARD), "run", name, "--json"], cwd=examples, env=env,
                          capture_output=True, text=True, timeout=180)
    return proc.returncode, json.loads(proc.stdout)


def test_python_pipeline_keeps_types_of_whole_references_and_stringifies_embedded_ones(
        examples: Path, env: dict[str, str]) -> None:
    code, result = run("python_pipeline.yaml", examples, env)
    assert code == 0, result.get("error")
    assert result["outputs"] == {
        "generate_data": {"numbers": [1, 4, 9, 16, 25], "count": 5},
        "calculate_stats": {"total": 55, "numbers_type": "list", "count_type": "int",
                            "label": "count=5 first=1", "literal": {"braces": "{{kept}}"}},
        "summarize_results": "echo: Summarize: 55 from [1, 4, 9, 16, 25]"}
    steps = result["steps"]
    assert steps["generate_data"]["finished_at"] <= steps["calculate_stats"]["started_at"]


def test_retry_config_runs_max_attempts_and_the_run_fails(examples: Path,
                                                          env: dict[str, str]) -> None:
    code, result = run("retry_fail.yaml", examples, env)
    assert code == 1 and result["status"] == "failed"
    failed = result["steps"]["always_fails"]
    assert failed["attempts"] == 3 and "RuntimeError: still broken" in failed["error"]
    assert result["steps"]["after"]["status"] != "completed"


def test_task_timeout_stops_the_task(examples: Path, env: dict[str, str]) -> None:
    code, result = run("timeout.yaml", examples, env)
    assert code == 1
    slow = result["steps"]["slow"]
    assert slow["error_type"] == "StepTimeoutError" and slow["duration_s"] < 10


def test_python_batch_gets_each_file_path_in_its_context(examples: Path,
                                                         env: dict[str, str]) -> None:
    code, result = run("batch_python.yaml", examples, env)
    assert code == 0, result.get("error")
    assert result["outputs"] == {"files": ["documents/meeting_notes.txt", "documents/story.txt"],
                                 "results": ["MEETING_NOTES.TXT", "STORY.TXT"]}


@pytest.mark.anyio
async def test_client_execute_python_and_python_tasks_with_sqlite_persistence(
        examples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        flowyard_home: Path) -> None:
    monkeypatch.chdir(examples)
    db = tmp_path / "gleitzeit.db"
    async with GleitzeitClient(persistence="sqlite", db_path=str(db), config=CONFIG) as client:
        assert await client.execute_python("scripts/generate_numbers.py", {"count": 3}) == \
            {"numbers": [1, 4, 9], "count": 3}
        (examples / "sleepy.py").write_text("import time\ntime.sleep(30)\nresult = 1\n")
        with pytest.raises(TimeoutError):
            await client.execute_python("sleepy.py", timeout=1)
        results = await client.run_workflow("python_pipeline.yaml")
        data = results["generate_data"].result
        assert data["success"] is True and data["result"] == {"numbers": [1, 4, 9, 16, 25],
                                                              "count": 5}
        assert results["summarize_results"].result["response"] == \
            "echo: Summarize: 55 from [1, 4, 9, 16, 25]"
    assert db.is_file()
    async with GleitzeitClient(persistence="sqlite", db_path=str(db), config=CONFIG) as again:
        names = [r.workflow_name for r in await again.list_workflows()]
        assert names[0] == "Mixed Provider Workflow" and names.count("gleitzeit-python") == 2
