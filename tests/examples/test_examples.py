"""The runnable examples work on real input with the local model."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_example(script: Path, tmp_path: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    env.update({"FLOWYARD_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"})
    proc = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def test_batch_summarize_digests_installed_license_files(tmp_path: Path) -> None:
    out = tmp_path / "batch"
    result = run_example(ROOT / "examples" / "batch-summarize" / "run.py", tmp_path,
                         "--files", "2", "--out", str(out))
    assert result["status"] == "completed"
    files = result["outputs"]["files"]
    assert len(files) == 2 and all(f.startswith("licenses/") for f in files)
    digest = Path(result["outputs"]["digest"]).read_text()
    headings = re.findall(r"^## (.+)$", digest, flags=re.M)
    assert headings == files
    bodies = re.split(r"^## .+$", digest, flags=re.M)[1:]
    assert all(len(body.strip()) > 10 for body in bodies)
    assert (tmp_path / "data" / "flowyard.db").is_file()


def test_custom_stack_script_runs_its_workflow_on_its_own_sqlite_file(tmp_path: Path) -> None:
    out = tmp_path / "custom"
    result = run_example(ROOT / "examples" / "custom-stack" / "compose.py", tmp_path,
                         "--out", str(out))
    assert result["status"] == "completed"
    assert result["storage"] == f"sqlite:///{out / 'runs.db'}"
    haiku = (out / "haiku.md").read_text()
    assert haiku.startswith("# A haiku for ") and len(haiku.splitlines()) >= 3
    with sqlite3.connect(out / "runs.db") as db:
        table = next(r[0] for r in db.execute(
            "select name from sqlite_master where type='table'") if r[0].endswith("runs"))
        status = db.execute(f"select status from {table} where id = ?",
                            (result["run_id"],)).fetchone()
    assert status == ("completed",)
    # the script composed its own stack: nothing went to the default data directory
    assert not (tmp_path / "data" / "flowyard.db").exists()
