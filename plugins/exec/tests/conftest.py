"""Fixtures of the flowyard-exec tests."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flowyard_exec import ExecSettings, PythonRunTool, ShellRunTool

# Real models are loaded from installed packages only; never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on asyncio and once on trio."""
    return str(request.param)


@pytest.fixture
def make_tools() -> Callable[..., tuple[ShellRunTool, PythonRunTool]]:
    """Build (shell.run, python.run) from ``[exec]`` keys."""

    def make(**section: Any) -> tuple[ShellRunTool, PythonRunTool]:
        settings = ExecSettings.from_section(section)
        return ShellRunTool(settings), PythonRunTool(settings)

    return make


def processes_matching(marker: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != b"Z":
            found.append(int(entry))
    return found


def wait_until_gone(marker: str, within: float = 5.0) -> list[int]:
    """Wait up to ``within`` seconds for every process carrying ``marker`` to end; return the
    survivors (empty when all ended)."""
    deadline = time.monotonic() + within
    while True:
        alive = processes_matching(marker)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    """A fixed work directory (so tests can look at what the command left behind)."""
    path = tmp_path / "wd"
    path.mkdir()
    return path


@pytest.fixture
def gone() -> Callable[..., list[int]]:
    """``gone(marker)``: wait for processes carrying ``marker`` to end; return survivors."""
    return wait_until_gone


@pytest.fixture
def open_work_dir() -> Iterator[Path]:
    """A work directory every user can reach (``tmp_path``'s parents are private to root, and
    an unsandboxed command runs as ``nobody`` when the tests run as root)."""
    path = Path(tempfile.mkdtemp(prefix="flowyard-exec-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)
