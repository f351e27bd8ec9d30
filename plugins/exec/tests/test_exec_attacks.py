"""Attack cases: fork bombs, infinite loops, huge allocations, escapes from Python, and
timeouts that must take every descendant with them."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from flowyard.errors import ToolError

pytestmark = pytest.mark.anyio

ISOLATIONS = [
    pytest.param({}, id="bubblewrap"),
    # Unsandboxed, the command still runs as `nobody` when the tests run as root, so that
    # RLIMIT_NPROC is enforced by the kernel.
    pytest.param({"isolation": "none"}, id="none"),
    # No bubblewrap: Landlock confines the files, the account and the limits do the rest.
    pytest.param({"bwrap": "/nonexistent/bwrap", "isolation": "landlock"}, id="landlock"),
]


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_shell_fork_bomb_is_contained_and_killed(gone: Any, make_tools: Any,
                                                       tool_context: Any,
                                                       isolation: dict[str, Any]) -> None:
    marker = f"forkbomb-{uuid.uuid4().hex}"
    shell, _ = make_tools(allow_shell=True, max_processes=40, **isolation)
    result = await shell.invoke(
        {"command": f"echo started; bomb() {{ bomb | bomb & }}; bomb; sleep 30 # {marker}",
         "shell": True, "timeout": 2}, tool_context)
    assert result["stdout"].startswith("started\n"), result["stderr"]
    assert result["timed_out"] is True or result["exit_code"] != 0
    assert result["duration_s"] < 10
    assert gone(marker) == [], "no process of the bomb survives the call"


async def test_python_fork_bomb_hits_the_process_limit(gone: Any, make_tools: Any,
                                                       tool_context: Any,
                                                       work_dir: Path) -> None:
    _, python = make_tools(max_processes=24, work_dir=str(work_dir))
    code = ("import os\ncount = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
            "            import time; time.sleep(30); os._exit(0)\n        count += 1\n"
            "except OSError as exc:\n    result = {'forked': count, 'error': type(exc).__name__}\n")
    out = await python.invoke({"code": code, "timeout": 10}, tool_context)
    assert out["result"]["error"] == "BlockingIOError"
    assert out["result"]["forked"] < 24
    assert gone(str(work_dir)) == [], "the sleeping children were killed"


async def test_python_endless_fork_loop_is_killed_at_the_timeout(gone: Any, make_tools: Any,
                                                                 tool_context: Any,
                                                                 work_dir: Path) -> None:
    _, python = make_tools(max_processes=24, work_dir=str(work_dir))
    code = ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
            "        pass\n")
    with pytest.raises(ToolError, match=r"timed out after 2"):
        await python.invoke({"code": code, "timeout": 2}, tool_context)
    assert gone(str(work_dir)) == []


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_infinite_loop_is_killed_at_the_timeout(gone: Any, make_tools: Any, tool_context: Any,
                                                      isolation: dict[str, Any]) -> None:
    marker = f"loop-{uuid.uuid4().hex}"
    shell, _ = make_tools(**isolation)
    result = await shell.invoke(
        {"command": ["sh", "-c", f"while :; do :; done # {marker}"], "timeout": 1},
        tool_context)
    assert result["timed_out"] is True
    assert 1 <= result["duration_s"] < 8
    assert gone(marker) == []


async def test_python_infinite_loop_raises_timeout(make_tools: Any, tool_context: Any) -> None:
    _, python = make_tools()
    with pytest.raises(ToolError, match=r"timed out after 1"):
        await python.invoke({"code": "while True:\n    pass\n", "timeout": 1}, tool_context)


async def test_cpu_limit_kills_a_busy_loop_before_the_wall_clock(make_tools: Any,
                                                                 tool_context: Any) -> None:
    _, python = make_tools(cpu_seconds=1)
    with pytest.raises(ToolError, match=r"without a result.*SIGXCPU|SIGKILL"):
        await python.invoke({"code": "while True:\n    pass\n", "timeout": 30}, tool_context)


async def test_huge_allocation_fails_inside_the_limit(make_tools: Any, tool_context: Any) -> None:
    _, python = make_tools(memory_mb=512)
    with pytest.raises(ToolError, match=r"MemoryError"):
        await python.invoke({"code": "block = bytearray(16 * 1024 ** 3)\nresult = len(block)"},
                            tool_context)
    # The same limit leaves ordinary work alone.
    ok = await python.invoke({"code": "result = len(bytearray(50 * 1024 ** 2))"}, tool_context)
    assert ok["result"] == 50 * 1024 ** 2


async def test_ctypes_cannot_write_outside_or_reach_the_host(make_tools: Any, tool_context: Any,
                                                             tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    target = Path(sys.prefix) / f"escape-{uuid.uuid4().hex}"
    _, python = make_tools()
    code = f"""
import ctypes, os
libc = ctypes.CDLL(None)
libc.open.restype = ctypes.c_int
fd_write = libc.open({str(target).encode()!r}, os.O_WRONLY | os.O_CREAT, 0o644)
fd_read = libc.open({str(secret).encode()!r}, os.O_RDONLY)
result = {{"write_fd": fd_write, "read_fd": fd_read, "uid": os.getuid(),
           "pids_visible": len([p for p in os.listdir('/proc') if p.isdigit()])}}
"""
    out = await python.invoke({"code": code}, tool_context)
    assert out["result"]["write_fd"] == -1, "the interpreter's prefix is read-only"
    assert out["result"]["read_fd"] == -1, "host files outside the binds are invisible"
    assert out["result"]["pids_visible"] < 10, "a private PID namespace"
    assert not target.exists()


async def test_ctypes_crash_is_contained(make_tools: Any, tool_context: Any) -> None:
    _, python = make_tools()
    with pytest.raises(ToolError, match=r"without a result.*SIGSEGV"):
        await python.invoke({"code": "import ctypes\nctypes.string_at(0)"}, tool_context)
    after = await python.invoke({"code": "result = 'still fine'"}, tool_context)
    assert after["result"] == "still fine"


async def test_subclass_walking_reaches_os_but_only_inside_the_sandbox(
        make_tools: Any, tool_context: Any, tmp_path: Path) -> None:
    target = Path(sys.prefix) / f"walk-{uuid.uuid4().hex}"
    _, python = make_tools()
    code = f"""
wrap = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0]
g = wrap.__init__.__globals__
status = g['system']('touch {target} 2>/dev/null')
result = {{"hostname": g['popen']('hostname').read().strip(), "touch_status": status,
           "id": g['popen']('id -u').read().strip()}}
"""
    out = await python.invoke({"code": code}, tool_context)
    assert out["result"]["hostname"] == "sandbox"
    assert out["result"]["touch_status"] != 0
    if os.geteuid() == 0:
        assert out["result"]["id"] == "65534"
    assert not target.exists()


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_timeout_kills_grandchildren(gone: Any, make_tools: Any, tool_context: Any,
                                           isolation: dict[str, Any], open_work_dir: Path
                                           ) -> None:
    work = open_work_dir
    marker = f"grandchild-{uuid.uuid4().hex}"
    shell, _ = make_tools(work_dir=str(work), **isolation)
    script = (f"(sh -c 'while true; do date +%s%N > tick; sleep 0.05; done # {marker}') & "
              f"sleep 100")
    result = await shell.invoke({"command": ["sh", "-c", script], "timeout": 1}, tool_context)
    assert result["timed_out"] is True
    assert gone(marker) == []
    first = (work / "tick").read_text()
    await anyio.sleep(0.3)
    assert (work / "tick").read_text() == first


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_background_process_does_not_outlive_a_finished_call(
        gone: Any, make_tools: Any, tool_context: Any, isolation: dict[str, Any]) -> None:
    marker = f"background-{uuid.uuid4().hex}"
    shell, _ = make_tools(**isolation)
    result = await shell.invoke(
        {"command": ["sh", "-c", f"(sleep 30 # {marker}\n) >/dev/null 2>&1 & echo started"],
         "timeout": 20}, tool_context)
    assert result["stdout"] == "started\n" and result["timed_out"] is False
    assert gone(marker) == []


async def test_setsid_escape_is_killed_in_the_sandbox(gone: Any, make_tools: Any,
                                                      tool_context: Any) -> None:
    marker = f"setsid-{uuid.uuid4().hex}"
    shell, _ = make_tools()
    result = await shell.invoke(
        {"command": ["sh", "-c", f"setsid sh -c 'sleep 60 # {marker}' & sleep 60"],
         "timeout": 1}, tool_context)
    assert result["timed_out"] is True
    assert gone(marker) == []


TAMPER = """
import os
argv = open('/proc/self/cmdline', 'rb').read().split(b'\\0')
result_path = argv[-2].decode()          # the runner's last argument
os.{how}({target!r}, result_path)
os._exit(0)                              # leave before the runner writes the real result
"""


async def test_result_file_swapped_for_a_symlink_is_not_followed(
        make_tools: Any, tool_context: Any, tmp_path: Path) -> None:
    """The code runs with less privilege than flowyard: it must not make flowyard read a
    host file for it by turning its result file into a link."""
    secret = tmp_path / "host-secret.json"
    secret.write_text('{"ok": true, "result": "host secret"}')
    _, python = make_tools()
    with pytest.raises(ToolError, match=r"replaced") as info:
        await python.invoke({"code": TAMPER.format(how="symlink", target=str(secret))},
                            tool_context)
    assert "host secret" not in str(info.value)


async def test_result_file_hard_link_is_refused(make_tools: Any, tool_context: Any,
                                                open_work_dir: Path) -> None:
    """A hard link to a file flowyard's account owns is refused by the kernel
    (fs.protected_hardlinks) or, where that protection is off, by the single-link check."""
    decoy = open_work_dir / "decoy.json"
    decoy.write_text('{"ok": true, "result": "planted"}')
    decoy.chmod(0o644)
    _, python = make_tools(work_dir=str(open_work_dir))
    with pytest.raises(ToolError, match=r"single link|Operation not permitted") as info:
        await python.invoke({"code": TAMPER.format(how="link", target=str(decoy))},
                            tool_context)
    assert "planted" not in str(info.value)
    assert sorted(p.name for p in open_work_dir.iterdir()) == ["decoy.json"], \
        "the call's own files are removed from a fixed work dir"
