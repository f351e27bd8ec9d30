"""The example plugin in examples/plugin-wordcount passes its own test suite (which includes
the ToolContract from flowyard.testing) and works through the plugin API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plugin-wordcount"


def test_example_plugin_suite_passes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(EXAMPLE / "src")}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " passed" in out.stdout and "failed" not in out.stdout
