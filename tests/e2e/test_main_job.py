"""The main job end to end: `flowyard run examples/python-docs-qa/workflow.yaml` on the
embedded defaults (SQLite, chromadb + MiniLM, SmolLM2 on llama.cpp), with fewer questions."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "examples" / "python-docs-qa" / "workflow.yaml"
FLOWYARD = Path(sys.executable).parent / "flowyard"


def test_main_job_writes_a_cited_report_and_records_the_run_in_sqlite(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    out_dir = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    env.update({"FLOWYARD_DATA_DIR": str(data_dir), "FLOWYARD_FILESYSTEM__ROOT": str(out_dir),
                "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"})
    proc = subprocess.run(
        [str(FLOWYARD), "run", str(WORKFLOW), "-i", "max_questions=2", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "completed"
    assert result["outputs"]["answered"] == 2

    report = Path(result["outputs"]["report"])
    assert report.is_file() and report.is_relative_to(out_dir)
    text = report.read_text()
    sections = re.findall(r"^## \d+\. (.+)$", text, flags=re.M)
    assert sections == ['What does the "global" statement do?',
                        'How does a "with" statement use a context manager?']
    cited = re.findall(r"^Cited topics: (.+)$", text, flags=re.M)
    assert len(cited) == 2
    from pydoc_data.topics import topics

    for line in cited:
        names = re.findall(r"`([^`]+)`", line)
        assert names and all(name in topics for name in names), line
    # the retriever finds the topic each question is about
    assert "global" in re.findall(r"`([^`]+)`", cited[0])
    assert "with" in re.findall(r"`([^`]+)`", cited[1])
    answers = re.split(r"^## \d+\. .+$", text, flags=re.M)[1:]
    assert all(len(a.split("Cited topics:")[0].strip()) > 20 for a in answers)

    database = data_dir / "flowyard.db"
    assert database.is_file()
    with sqlite3.connect(database) as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
        run_table = next(t for t in tables if t.endswith("runs"))
        rows = db.execute(f"select id, status, workflow_name from {run_table}").fetchall()
    by_id = {r[0]: r for r in rows}
    assert by_id[result["run_id"]][1:] == ("completed", "python-docs-qa")
