"""Fixtures of the flowyard-orchestrator-format tests: every async test runs on both anyio
backends; stand-in tools for a venv without the tool plugins."""

from __future__ import annotations

import os

import pytest

# Real models are loaded from installed packages only; never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on asyncio and once on trio."""
    return str(request.param)


# ---------------------------------------------------------------- small stand-in tools
#
# The plugin maps the Orchestrator's tools to flowyard-filesystem's and flowyard-exec's, which
# are not installed where these tests run (the core and this distribution only). These tools
# have the same names, arguments and result fields (the part the translation relies on), so
# the example pipelines run here too; tests/e2e/test_orchestrator_format.py runs them again
# on the real plugins.

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import anyio  # noqa: E402
import flowyard  # noqa: E402
from flowyard import ToolError  # noqa: E402


class EchoFirstRouter:
    """A router for ``model: auto`` (what ``<AUTO>`` in ``model`` becomes) where the routing
    plugin is not installed: it picks ``fake/echo``."""

    async def choose(self, request: Any, models: Any) -> list[Any]:
        """Return the fake provider's echo model first."""
        return sorted(models, key=lambda m: (m.provider, m.model) != ("fake", "echo"))

    def record_outcome(self, model: Any, *, success: bool, cost_usd: float | None,
                       latency_s: float) -> None:
        """Learn nothing."""


class StandInTools:
    """filesystem.read/write/append and shell.run inside one directory, and the router."""

    @flowyard.hookimpl
    def register_routers(self, register: Any, config: Any, services: Any) -> None:
        register("cheapest", EchoFirstRouter())

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, path: str) -> Path:
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise ToolError(f"{path!r} is outside the workspace")
        return target

    @flowyard.hookimpl
    def register_tools(self, register: Any, config: Any, services: Any) -> None:
        root = self

        @flowyard.tool(name="filesystem.read")
        def read(path: str, encoding: str = "utf-8") -> dict[str, Any]:
            """Read a text file.

            Args:
                path: the file, relative to the workspace.
                encoding: its encoding.
            """
            target = root._path(path)
            if not target.is_file():
                raise ToolError(f"{path!r} does not exist")
            data = target.read_bytes()
            return {"path": path, "content": data.decode(encoding), "encoding": encoding,
                    "size": len(data)}

        @flowyard.tool(name="filesystem.write")
        def write(path: str, content: str, overwrite: bool = True,
                  make_parents: bool = True) -> dict[str, Any]:
            """Write a text file.

            Args:
                path: the file, relative to the workspace.
                content: the text.
                overwrite: replace an existing file.
                make_parents: create missing directories.
            """
            target = root._path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            data = content.encode()
            target.write_bytes(data)
            return {"path": path, "bytes_written": len(data)}

        @flowyard.tool(name="filesystem.append")
        def append(path: str, content: str) -> dict[str, Any]:
            """Append to a text file.

            Args:
                path: the file, relative to the workspace.
                content: the text.
            """
            target = root._path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("a") as handle:
                handle.write(content)
            return {"path": path, "bytes_appended": len(content.encode()),
                    "size": target.stat().st_size}

        @flowyard.tool(name="shell.run")
        async def shell_run(command: str, shell: bool = False, timeout: float = 30
                            ) -> dict[str, Any]:
            """Run a shell command line in the workspace (cancelled with its step).

            Args:
                command: the command line.
                shell: must be true for a command line.
                timeout: seconds.
            """
            if not shell:
                raise ToolError("a command line needs shell: true")
            with anyio.fail_after(timeout):
                proc = await anyio.run_process(["/bin/sh", "-c", command], cwd=root.root,
                                               check=False)
            return {"exit_code": proc.returncode, "stdout": proc.stdout.decode(),
                    "stderr": proc.stderr.decode()}

        for function in (read, write, append, shell_run):
            register(function.name, function)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """An empty workspace directory for the stand-in tools."""
    root = tmp_path / "ws"
    root.mkdir()
    return root


@pytest.fixture
def stand_in_tools(workspace: Path) -> StandInTools:
    """The stand-in filesystem and shell tools, working in ``workspace``."""
    return StandInTools(workspace)
