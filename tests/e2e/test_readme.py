"""The README's tour works as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [body for lang, body in re.findall(r"```(\w+)\n(.*?)```", text, re.S)
            if lang == language]


def isolated_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    env.update({"FLOWYARD_DATA_DIR": str(tmp_path / "data"),
                "FLOWYARD_FILESYSTEM__ROOT": str(tmp_path / "out"), "HF_HUB_OFFLINE": "1"})
    return env


def test_python_tour_runs(tmp_path: Path) -> None:
    [tour] = blocks("python")
    script = tmp_path / "tour.py"
    script.write_text(tour)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=isolated_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "completed {'total': 5}"


def test_yaml_tour_validates_and_runs_on_the_local_model(tmp_path: Path) -> None:
    [workflow] = blocks("yaml")
    path = tmp_path / "summarize.yaml"
    path.write_text(workflow)
    env = isolated_env(tmp_path)
    check = subprocess.run([str(BIN / "flowyard"), "validate", str(path)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([str(BIN / "flowyard"), "run", str(path), "--json", "-i",
                          "text=flowyard runs workflows."], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    summary = result["outputs"]["summary"]
    assert isinstance(summary, str) and summary.strip()
    assert (tmp_path / "out" / "summary.txt").read_text() == summary
