"""Issue 16, item 2, tried as an attacker: real processes, real files, a real TCP server on
127.0.0.1. The default fails closed without bubblewrap; a weaker level is chosen explicitly
and announced on stderr for every call; nothing the command starts outlives the call, however
it detached; the allow-list compares real paths; the sandbox has no network unless the call
asks for it.

The machine without bubblewrap is simulated by pointing ``[exec] bwrap`` at a missing path.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flowyard.errors import ToolError, ToolInputError

pytestmark = pytest.mark.anyio

NO_BWRAP = "/nonexistent/bin/bwrap"

LEVELS = [
    pytest.param({}, "bubblewrap", id="bubblewrap"),
    pytest.param({"bwrap": NO_BWRAP, "isolation": "landlock"}, "landlock", id="landlock"),
    pytest.param({"bwrap": NO_BWRAP, "isolation": "none"}, "none", id="none"),
]


# ----------------------------------------------------------------------------- fail closed


async def test_default_without_bubblewrap_refuses_and_runs_nothing(
        make_tools: Any, tool_context: Any, work_dir: Path) -> None:
    shell, python = make_tools(bwrap=NO_BWRAP, work_dir=str(work_dir))
    for tool, arguments in ((shell, {"command": ["touch", "ran"]}),
                            (python, {"code": "open('ran', 'w').write('x')"})):
        with pytest.raises(ToolError) as caught:
            await tool.invoke(arguments, tool_context)
        message = str(caught.value)
        assert f"bubblewrap not found at {NO_BWRAP}" in message
        assert "refusing to run unsandboxed" in message
        assert "apt-get install bubblewrap" in message, "how to install it"
        assert 'isolation = "landlock"' in message and 'isolation = "none"' in message, (
            "how to opt out explicitly")
    assert not (work_dir / "ran").exists(), "nothing ran"


async def test_a_step_cannot_opt_out_of_the_default(make_tools: Any, tool_context: Any) -> None:
    shell, _ = make_tools(bwrap=NO_BWRAP)
    for weaker in ("landlock", "none"):
        with pytest.raises(ToolError, match="refusing to run unsandboxed"):
            await shell.invoke({"command": ["true"], "isolation": weaker}, tool_context)
        step = tool_context.child(extras={"isolation": weaker})
        with pytest.raises(ToolError, match="refusing to run unsandboxed"):
            await shell.invoke({"command": ["true"]}, step)


@pytest.mark.parametrize("level", ["landlock", "none"])
async def test_explicit_opt_out_warns_on_stderr_for_every_call(
        make_tools: Any, tool_context: Any, capfd: pytest.CaptureFixture[str],
        level: str) -> None:
    shell, python = make_tools(bwrap=NO_BWRAP, isolation=level)
    capfd.readouterr()
    first = await shell.invoke({"command": ["true"]}, tool_context)
    second = await shell.invoke({"command": ["true"]}, tool_context)
    third = await python.invoke({"code": "result = 1"}, tool_context)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines()
             if f"runs unsandboxed with isolation {level}" in line]
    assert len(lines) == 3, err
    assert sum("shell.run" in line for line in lines) == 2
    assert sum("python.run" in line for line in lines) == 1
    assert all(out["isolation"] == level for out in (first, second, third))


async def test_bubblewrap_calls_print_no_warning(make_tools: Any, tool_context: Any,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    shell, _ = make_tools()
    capfd.readouterr()
    out = await shell.invoke({"command": ["true"]}, tool_context)
    assert out["isolation"] == "bubblewrap"
    assert "unsandboxed" not in capfd.readouterr().err


# ----------------------------------------------------------------------------- descendants


@pytest.mark.parametrize(("config", "level"), LEVELS)
async def test_setsid_daemon_does_not_outlive_the_call(
        make_tools: Any, tool_context: Any, gone: Any, config: dict[str, Any],
        level: str) -> None:
    seconds = str(900_000 + uuid.uuid4().int % 99_999)  # the marker: a unique argument
    shell, _ = make_tools(**config)
    out = await shell.invoke(
        {"command": ["sh", "-c", f"setsid sleep {seconds} >/dev/null 2>&1 </dev/null & "
                                 f"sleep 0.5; echo started"]}, tool_context)
    assert out["isolation"] == level and out["stdout"] == "started\n", out
    assert gone(f"sleep {seconds}", within=3.0) == [], "the setsid child was killed"


@pytest.mark.parametrize(("config", "level"), LEVELS)
@pytest.mark.parametrize("ends", ["exits", "times_out"])
async def test_double_forked_daemon_is_gone(make_tools: Any, tool_context: Any, gone: Any,
                                            config: dict[str, Any], level: str,
                                            ends: str) -> None:
    seconds = str(800_000 + uuid.uuid4().int % 99_999)
    code = ("import os, sys\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            "        fd = os.open(os.devnull, os.O_RDWR)\n"
            "        for n in (0, 1, 2):\n"
            "            os.dup2(fd, n)\n"
            f"        os.execvp('sleep', ['sleep', '{seconds}'])\n"
            "    os._exit(0)\n"
            "os.wait()\n"
            "import time\n"
            f"time.sleep({30 if ends == 'times_out' else 0})\n"
            "result = 'parent done'\n")
    _, python = make_tools(**config)
    if ends == "exits":
        out = await python.invoke({"code": code}, tool_context)
        assert out["result"] == "parent done" and out["isolation"] == level
    else:
        with pytest.raises(ToolError, match="timed out"):
            await python.invoke({"code": code, "timeout": 2}, tool_context)
    assert gone(f"sleep {seconds}", within=3.0) == [], "the daemon was killed"


# ----------------------------------------------------------------------------- allow-list


@pytest.fixture
def fake_ls(tmp_path: Path) -> Iterator[Path]:
    """A world-readable directory with a symlink named ``ls`` pointing at ``id``."""
    folder = tmp_path / "evil-bin"
    folder.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(folder, 0o755)
    (folder / "ls").symlink_to("/usr/bin/id")
    yield folder


async def test_symlink_named_like_an_allowed_command_is_refused(
        make_tools: Any, tool_context: Any, fake_ls: Path) -> None:
    shell, _ = make_tools(allowed_commands=["ls"])
    with pytest.raises(ToolInputError, match=r"'ls' \(real path /usr/bin/id\) is not in "
                                             r"\[exec\] allowed_commands"):
        await shell.invoke({"command": ["ls"], "env": {"PATH": f"{fake_ls}:/usr/bin:/bin"}},
                           tool_context)
    with pytest.raises(ToolInputError, match="allowed_commands"):
        await shell.invoke({"command": [str(fake_ls / "ls")]}, tool_context)
    with pytest.raises(ToolInputError, match="relative paths are refused"):
        await shell.invoke({"command": ["./ls"]}, tool_context)
    allowed = await shell.invoke({"command": ["ls", "-d", "/"]}, tool_context)
    assert allowed["stdout"] == "/\n" and allowed["command"] == ["ls", "-d", "/"]
    by_path = await shell.invoke({"command": ["/usr/bin/ls", "-d", "/"]}, tool_context)
    assert by_path["stdout"] == "/\n"


# ----------------------------------------------------------------------------- network


@pytest.fixture
def loopback_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 answering ``pong`` to every connection; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"pong")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    server.close()


def _client(port: int) -> str:
    return ("import socket\n"
            "try:\n"
            f"    with socket.create_connection(('127.0.0.1', {port}), timeout=3) as s:\n"
            "        result = s.recv(4).decode()\n"
            "except OSError as exc:\n"
            "    result = 'error: ' + type(exc).__name__\n")


async def test_sandbox_has_no_network_unless_the_call_asks(
        make_tools: Any, tool_context: Any, loopback_server: int) -> None:
    _, strict = make_tools()
    denied = await strict.invoke({"code": _client(loopback_server)}, tool_context)
    assert denied["isolation"] == "bubblewrap"
    assert denied["result"].startswith("error: "), denied
    with pytest.raises(ToolInputError, match=r"network: true needs \[exec\] network = true"):
        await strict.invoke({"code": _client(loopback_server), "network": True}, tool_context)
    _, allowing = make_tools(network=True)
    not_asked = await allowing.invoke({"code": _client(loopback_server)}, tool_context)
    assert not_asked["result"].startswith("error: "), "config alone does not open it"
    asked = await allowing.invoke({"code": _client(loopback_server), "network": True},
                                  tool_context)
    assert asked["result"] == "pong" and asked["isolation"] == "bubblewrap"
