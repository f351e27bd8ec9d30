"""flowyard-exec against the core's tool contract, and its registration as a plugin."""

from __future__ import annotations

from typing import Any

import flowyard_exec.plugin
import pytest
from flowyard.stack import Stack
from flowyard.testing import ToolContract
from flowyard_exec import ExecSettings, PythonRunTool, ShellRunTool


class TestShellRunContract(ToolContract):
    @pytest.fixture
    def tool(self) -> Any:
        return ShellRunTool(ExecSettings.from_section({}))

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"command": ["echo", "hello"], "timeout": 20}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"command": [], "timeout": -1}


class TestPythonRunContract(ToolContract):
    @pytest.fixture
    def tool(self) -> Any:
        return PythonRunTool(ExecSettings.from_section({}))

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"code": "result = sum(context['xs'])", "context": {"xs": [1, 2]}}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"code": "result = 1", "script": "a.py"}


def test_plugin_registers_both_tools_from_the_exec_section() -> None:
    stack = Stack(plugins=[("exec", flowyard_exec.plugin)],
                  config={"exec": {"timeout": 5, "allow_shell": True}})
    shell = stack.tools.get("shell.run")
    python = stack.tools.get("python.run")
    assert shell.name == "shell.run" and python.name == "python.run"
    assert shell.settings.timeout == 5.0 and shell.settings.allow_shell is True
    assert "process" in shell.side_effects and shell.idempotent is False


def test_installed_entry_point_is_discovered() -> None:
    stack = Stack(discover=True, config={"plugins": {"enabled": ["exec"]}})
    assert {"shell.run", "python.run"} <= set(stack.tools.names())
