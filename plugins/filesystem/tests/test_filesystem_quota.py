"""The quotas through the tools, tried as an attacker would: ``[filesystem] max_files`` read
from the configuration (default 100,000), thousands of empty files through
``filesystem.write``, processes racing for the total quota through the tools, and no lock file
anywhere the tools could reach. (The library side is in
libs/safepath/tests/test_safepath_quota_shared.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from flowyard.context import ToolContext
from flowyard.errors import ToolError
from flowyard.stack import Stack
from flowyard_filesystem import plugin
from flowyard_safepath import QuotaExceededError


def _stack(root_dir: Path, **limits: Any) -> Stack:
    return Stack(plugins=[("filesystem", plugin)],
                 config={"filesystem": {"root": str(root_dir), "fsync": False, **limits}})


def test_max_files_is_read_from_the_configuration(flowyard_home: Path, root_dir: Path) -> None:
    default = _stack(root_dir).tools.get("filesystem.write")
    assert default.root.max_files == 100_000 == plugin.DEFAULT_LIMITS["max_files"]
    configured = _stack(root_dir, max_files=7).tools.get("filesystem.write")
    assert configured.root.max_files == 7


def test_three_thousand_empty_files_refused_from_the_1001st(flowyard_home: Path,
                                                            root_dir: Path) -> None:
    stack = _stack(root_dir, max_files=1000)
    write = stack.tools.get("filesystem.write")
    refused: list[int] = []
    for i in range(1, 3001):
        try:
            write.call({"path": f"spam/{i}.txt", "content": ""})
        except QuotaExceededError as exc:
            assert "file-count quota (max_files) is 1000 files" in str(exc), exc
            refused.append(i)
    assert refused == list(range(1001, 3001))
    assert len(os.listdir(root_dir / "spam")) == 1000
    # every tool that creates a file is bounded by the same count
    with pytest.raises(QuotaExceededError, match="max_files"):
        stack.tools.get("filesystem.append").call({"path": "log.txt", "content": "x"})
    with pytest.raises(QuotaExceededError, match="max_files"):
        stack.tools.get("filesystem.copy").call({"source": "spam/1.txt",
                                                  "destination": "c.txt"})
    stack.tools.get("filesystem.delete").call({"path": "spam/1.txt"})
    write.call({"path": "one-more.txt", "content": ""})


@pytest.mark.anyio
async def test_the_refusal_surfaces_as_the_tool_s_quota_error(flowyard_home: Path,
                                                              root_dir: Path) -> None:
    stack = _stack(root_dir, max_files=1)
    tool = stack.tools.get("filesystem.write")
    await tool.invoke({"path": "a", "content": ""}, ToolContext(stack=stack))
    with pytest.raises(QuotaExceededError, match=r"'b': .*file-count quota") as info:
        await tool.invoke({"path": "b", "content": ""}, ToolContext(stack=stack))
    assert info.value.tool == "filesystem.write"
    assert info.value.retriable is False


_TOOL_WRITER = textwrap.dedent("""
    import json, os, sys, time
    from flowyard.stack import Stack
    from flowyard_filesystem import plugin
    from flowyard_safepath import QuotaExceededError

    root_dir, name, go = sys.argv[1], sys.argv[2], sys.argv[3]
    stack = Stack(plugins=[("filesystem", plugin)],
                  config={"filesystem": {"root": root_dir, "fsync": True,
                                         "max_total_bytes": 5_000_000}})
    write = stack.tools.get("filesystem.write")
    content = "x" * 500_000
    write.root.usage()  # warm up before the start line
    while not os.path.exists(go):
        time.sleep(0.001)
    results = []
    for k in range(10):
        try:
            args = {"path": f"{name}-{k}", "content": content}
            results.append({"ok": write.call(args)["bytes_written"]})
        except QuotaExceededError as exc:
            results.append({"quota": str(exc)})
    print(json.dumps(results))
""")


def test_processes_racing_through_the_write_tool_stay_within_the_total_quota(
        flowyard_home: Path, tmp_path: Path, root_dir: Path) -> None:
    """Four processes, each its own stack on the same root, each write ten files of 0.5 MB
    through ``filesystem.write`` (20 MB asked) from the same moment under a 5 MB quota:
    exactly ten writes succeed, every other one gets the quota error. (The race itself is
    made reliable with a slow producer in the library's tests; that the tools take the lock is
    shown by the next test.)"""
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _TOOL_WRITER, str(root_dir), f"w{i}",
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(4)]
    time.sleep(1.0)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.extend(json.loads(out))
    assert sum(1 for r in results if "ok" in r) == 10, results
    for r in results:
        assert r.get("ok") == 500_000 or "total quota is 5000000 bytes" in r["quota"], r
    assert sum(p.stat().st_size for p in root_dir.iterdir()) == 5_000_000


_HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(1.0)
    with open(os.path.join(sys.argv[1], "holder-done"), "w") as f:
        f.write("x")
""")


def test_the_write_tool_waits_for_another_process_holding_the_root_lock(
        flowyard_home: Path, root_dir: Path) -> None:
    """The tools built from the configuration take the cross-process lock: while another
    process holds the ``flock`` of the root, ``filesystem.write`` waits, and completes only
    after the holder has finished its own write."""
    stack = _stack(root_dir)
    write = stack.tools.get("filesystem.write")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(root_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        write.call({"path": "mine.txt", "content": "m"})
        assert time.monotonic() - started >= 0.5
        assert (root_dir / "holder-done").exists()
    finally:
        holder.wait(timeout=30)


def test_no_lock_file_is_reachable_through_the_tools(flowyard_home: Path, root_dir: Path
                                                     ) -> None:
    """The quota lock is a ``flock`` on the root directory itself: after quota'd writes, the
    root holds only what the tools wrote, and the names a lock file might have are ordinary,
    counted names that do not affect the lock."""
    stack = _stack(root_dir, max_files=3, max_total_bytes=1000)

    def tool(action: str, **arguments: Any) -> Any:
        return stack.tools.get(f"filesystem.{action}").call(arguments)

    tool("write", path="a.txt", content="a")
    tool("append", path="b.log", content="b")
    assert sorted(os.listdir(root_dir)) == ["a.txt", "b.log"]
    assert [e["name"] for e in tool("list", path=".")["entries"]] == ["a.txt", "b.log"]
    assert tool("glob", pattern="**/*", include_hidden=True)["matches"] == ["a.txt", "b.log"]
    for name in [".flowyard-quota.lock", ".lock", ".flowyard-quota"]:
        assert tool("exists", path=name)["exists"] is False
        with pytest.raises(ToolError, match="does not exist"):
            tool("read", path=name)
        with pytest.raises(ToolError, match="does not exist"):
            tool("delete", path=name)
    # a file with a lock-like name is just a file: it counts, and replacing it is harmless
    tool("write", path=".flowyard-quota.lock", content="x")
    tool("delete", path=".flowyard-quota.lock")
    tool("write", path="c.txt", content="c")
    with pytest.raises(QuotaExceededError, match="max_files"):
        tool("write", path="d.txt", content="d")
