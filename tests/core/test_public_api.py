"""``flowyard`` is the one public plugin API: every name resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

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
