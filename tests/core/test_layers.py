"""The core's layers are enforced by import-linter (contract in the repository's .importlinter)."""

from __future__ import annotations

import ast
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


def _function_local_core_imports(path: Path) -> list[ast.ImportFrom | ast.Import]:
    """Imports of ``flowyard`` modules (absolute or relative) inside function bodies."""
    found: list[ast.ImportFrom | ast.Import] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, ast.ImportFrom) and (
                    child.level or (child.module or "").split(".")[0] == "flowyard"):
                found.append(child)
            elif in_function and isinstance(child, ast.Import) and any(
                    a.name.split(".")[0] == "flowyard" for a in child.names):
                found.append(child)
            walk(child, in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False)
    return found


def test_every_function_local_core_import_says_why_it_is_lazy() -> None:
    """A function-local ``from flowyard...`` import stays only to keep ``import flowyard`` and
    the CLI fast, with ``# lazy: <reason>`` at its end or on the line above; anything else is
    imported at the top of the module (the layers contract forbids the cycles it could hide).
    """
    src = ROOT / "core" / "src" / "flowyard"
    offenders = []
    for path in sorted(src.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in _function_local_core_imports(path):
            end = node.end_lineno or node.lineno
            own = lines[node.lineno - 1:end]
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            if not (any("# lazy:" in line for line in own) or above.startswith("# lazy:")):
                offenders.append(f"{path.relative_to(src)}:{node.lineno}: "
                                 f"{lines[node.lineno - 1].strip()}")
    assert not offenders, ("function-local imports without a `# lazy: <reason>` comment (import "
                           "at the top of the module instead):\n" + "\n".join(offenders))
