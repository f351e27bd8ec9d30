"""The README's example (examples/: an SDK server, its flowyard.toml, a workflow mixing MCP
tools, a resource and echo) runs through the `flowyard` command line as documented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FLOWYARD = Path(sys.executable).parent / "flowyard"


def test_the_readme_example_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    env.update({"USER_SIGNATURE": "ada", "FLOWYARD_STORAGE_URL": "memory://",
                "FLOWYARD_DATA_DIR": str(tmp_path / "d"),
                "XDG_CONFIG_HOME": str(tmp_path / "config"),
                "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"})
    proc = subprocess.run([str(FLOWYARD), "run", "notes.yaml", "-i", "text=the cat sat",
                           "--json"], cwd=EXAMPLES, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["outputs"] == {"said": "3 words: THE CAT SAT -- ada",
                                 "motd": "Keep workflows small."}
