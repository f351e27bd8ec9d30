"""The core's layers are enforced by import-linter (contract in the repository's .importlinter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_linter_layers_contract_is_kept() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.fail("lint-imports is not installed: install the core's test extra "
                    "(pip install -e 'core[test]')")
    done = subprocess.run([exe, "--config", str(ROOT / ".importlinter"), "--no-cache"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_module_below_the_composition_root_names_stack() -> None:
    """Not even for typing: lower layers type against flowyard.interfaces.Services."""
    src = ROOT / "core" / "src" / "flowyard"
    allowed = {"stack.py", "__init__.py"}
    above = {"builtin", "commands", "testing"}
    offenders = []
    for path in src.rglob("*.py"):
        rel = path.relative_to(src)
        if rel.parts[0] in above or str(rel) in allowed or rel.name == "cli.py":
            continue
        text = path.read_text(encoding="utf-8")
        if "from flowyard.stack import" in text or "import flowyard.stack" in text:
            offenders.append(str(rel))
    assert not offenders, f"modules below the composition root import Stack: {offenders}"
