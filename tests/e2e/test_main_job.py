"""The main job end to end: `flowyard run examples/python-docs-qa/workflow.yaml` on the
embedded defaults (SQLite, chromadb + MiniLM, SmolLM2 on llama.cpp), with fewer questions:
the Markdown and HTML reports show every answer with a support verdict and evidence quoted
verbatim from the reference."""

from __future__ import annotations

import html
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
    # every answer has a verdict, and an unsupported one an answer of record
    verdicts = re.findall(r"^\*\*(Supported|Partly supported|Not supported)\b", text, flags=re.M)
    assert len(verdicts) == 2, text
    assert result["outputs"]["verdicts"] == {
        "supported": verdicts.count("Supported"), "partly": verdicts.count("Partly supported"),
        "not supported": verdicts.count("Not supported")}
    assert text.count("**Answer of record**") == verdicts.count("Not supported")
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

    # the HTML report next to it: the same sections, escaped, evidence quoted verbatim
    page_path = Path(result["outputs"]["report_html"])
    assert page_path == report.with_suffix(".html") and page_path.is_file()
    page = page_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    headings = [html.unescape(h) for h in re.findall(r"<h2>\d+\. (.+?)</h2>", page)]
    assert headings == sections
    assert '"global"' not in page and "&#34;global&#34;" in page  # quotes are escaped
    v = result["outputs"]["verdicts"]
    summary = (f"Verdicts: {v['supported']} supported, {v['partly']} partly supported, "
               f"{v['not supported']} not supported.")
    assert summary in text and f"<p>{summary}</p>" in page
    badges = re.findall(r'<span class="verdict [a-z-]+">([a-z ]+)</span>', page)
    assert [b.capitalize() for b in badges] == [
        v if v != "Partly supported" else "Partly" for v in verdicts]
    quotes = [html.unescape(q) for q in
              re.findall(r'<blockquote class="quote">(.*?)</blockquote>', page, flags=re.S)]
    assert len(quotes) >= 2
    reference = "\n".join(topics.values())
    for quote in quotes:
        for part in quote.strip().removeprefix("… ").removesuffix(" …").split(" … "):
            assert part in reference, part

    database = data_dir / "flowyard.db"
    assert database.is_file()
    with sqlite3.connect(database) as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
        run_table = next(t for t in tables if t.endswith("runs"))
        rows = db.execute(f"select id, status, workflow_name from {run_table}").fetchall()
    by_id = {r[0]: r for r in rows}
    assert by_id[result["run_id"]][1:] == ("completed", "python-docs-qa")
