"""``flowyard`` is the one public plugin API: every name resolves, lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import flowyard


def test_every_public_name_resolves() -> None:
    missing = [name for name in flowyard.__all__ if getattr(flowyard, name, None) is None]
    assert not missing
    assert flowyard.Services.__module__ == "flowyard.interfaces"
    assert flowyard.hookimpl is not None and flowyard.Register is not None


def test_import_flowyard_stays_lazy() -> None:
    code = ("import sys, flowyard; "
            "print(sorted(m for m in sys.modules if m.startswith('flowyard')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "flowyard.stack" not in out and "flowyard.engine" not in out, out


ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core" / "src" / "flowyard"


def _protocol_members() -> set[str]:
    """Every method and attribute a Protocol of ``flowyard.interfaces`` declares."""
    tree = ast.parse((CORE / "interfaces.py").read_text(encoding="utf-8"))
    members: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id == "Protocol" for b in node.bases):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
    # ``name`` is everybody's (tool calls, events...): too common to tell a probe apart.
    return members - {"name"}


def test_capabilities_are_exported_runtime_checkable_protocols() -> None:
    import flowyard.interfaces

    capabilities = [n for n in flowyard.interfaces.__all__ if n.startswith("Supports")]
    assert {"SupportsAclose", "SupportsTokenCounting", "SupportsRouterState"} <= set(capabilities)
    for name in capabilities:
        proto = getattr(flowyard, name)
        assert name in flowyard.__all__
        assert getattr(proto, "_is_runtime_protocol", False), name
        assert proto.__doc__, name

    class Closing:
        async def aclose(self) -> None: ...

    class Learning:
        def export_state(self) -> dict[str, object]:
            return {}

        def import_state(self, state: object) -> None: ...

    assert isinstance(Closing(), flowyard.SupportsAclose)
    assert not isinstance(Closing(), flowyard.SupportsRouterState)
    assert isinstance(Learning(), flowyard.SupportsRouterState)
    assert not isinstance(Learning(), flowyard.SupportsTokenCounting)


def test_the_core_declares_capabilities_instead_of_probing_them() -> None:
    """No ``getattr``/``hasattr`` on a member of an interface: check a Protocol instead."""
    members = _protocol_members()
    assert {"aclose", "count_prompt_tokens", "choose_explained", "export_state"} <= members
    probes = []
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value in members):
                probes.append(f"{path.relative_to(CORE)}:{node.lineno} {node.args[1].value}")
    assert not probes, f"probed instead of declared (add a Supports* protocol): {probes}"


def _flowyard_submodule_imports(path: Path) -> list[str]:
    """``file:line module`` of every import of ``flowyard.<anything>`` in ``path`` (type-only
    and function-local imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        found += [f"{path.relative_to(ROOT)}:{node.lineno} {m}" for m in modules
                  if m.startswith("flowyard.")]
    return found


def test_first_party_plugins_and_libraries_import_only_the_public_api() -> None:
    """Plugins and libraries import ``from flowyard import X``, never ``flowyard.<module>``,
    so the core's modules can move (pluggy's one ``__all__``). Nothing is allow-listed. The
    example plugin and the contrib scaffold that third parties copy follow the same rule."""
    files = sorted([*ROOT.glob("plugins/*/src/**/*.py"), *ROOT.glob("libs/*/src/**/*.py"),
                    *ROOT.glob("examples/*/src/**/*.py"), *ROOT.glob("contrib/*/src/**/*.py")])
    assert len(files) > 20
    offenders = [hit for path in files for hit in _flowyard_submodule_imports(path)]
    assert not offenders, ("import these names from `flowyard` (add them to its __all__ and "
                           "lazy table if they are public):\n" + "\n".join(offenders))
