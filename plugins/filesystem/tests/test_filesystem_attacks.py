"""Attacks through the filesystem tools: a refused path surfaces as the tool's input error,
walks never follow links out, and a symlink swapped in while the tools run never leaks.
(The attacks on SafeRoot itself are in libs/safepath/tests.)"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flowyard.errors import ToolError, ToolInputError
from flowyard_filesystem import tools
from flowyard_safepath import SafeRoot


async def test_refusals_surface_as_tool_input_errors_with_the_given_path(
        safe_root: SafeRoot, tool_context: Any) -> None:
    tool = tools.ReadTool(safe_root)
    with pytest.raises(ToolInputError, match=r"'\.\./outside/secret\.txt'") as info:
        await tool.invoke({"path": "../outside/secret.txt"}, tool_context)
    assert info.value.tool == "filesystem.read"


test_refusals_surface_as_tool_input_errors_with_the_given_path = pytest.mark.anyio(
    test_refusals_surface_as_tool_input_errors_with_the_given_path)


def test_walks_never_follow_links_out(safe_root: SafeRoot, outside: Path) -> None:
    root = safe_root.root
    (root / "docs").mkdir()
    (root / "docs" / "a.md").write_text("a")
    (root / "docs" / "out").symlink_to(outside)
    glob = tools.GlobTool(safe_root).call({"pattern": "**/*"})
    assert glob["matches"] == ["docs", "docs/a.md", "docs/out"]
    assert safe_root.usage() == 1
    with pytest.raises(ToolError, match=r"cannot copy 'docs/out'.*symlink"):
        safe_root.copy("docs", "docs2")
    assert sorted(os.listdir(root)) == ["docs"]


def test_a_symlink_swapped_in_during_calls_never_leaks(safe_root: SafeRoot, outside: Path
                                                       ) -> None:
    """A thread keeps swapping directory ``d`` (inside) for a symlink to ``outside`` while the
    tools read, write and append through ``d``; nothing outside is ever read or written."""
    root = safe_root.root
    (root / "d").mkdir()
    (root / "d" / "secret.txt").write_text("inside")
    (root / "f.txt").write_text("inside-file")
    stop = threading.Event()
    swaps = [0]

    errors: list[BaseException] = []

    def swapper() -> None:
        real, link = root / "d_real", root / "d"
        try:
            while not stop.is_set():
                # the directory: nothing else creates `d` (make_parents is off below)
                os.rename(link, real)
                os.symlink(outside, link)
                # the file: swapped atomically, since the writer may replace it at any time
                os.symlink(outside / "secret.txt", root / "f.tmp")
                os.replace(root / "f.tmp", root / "f.txt")
                time.sleep(0)
                os.unlink(link)
                os.rename(real, link)
                (root / "f.new").write_text("inside-file")
                os.replace(root / "f.new", root / "f.txt")
                swaps[0] += 1
                time.sleep(0)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
            raise

    reader = tools.ReadTool(safe_root)
    writer = tools.WriteTool(safe_root)
    appender = tools.AppendTool(safe_root)
    outcomes: dict[str, int] = {"ok": 0, "refused": 0}
    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline and (
                outcomes["ok"] < 100 or outcomes["refused"] < 100 or swaps[0] < 50):
            for action in (
                lambda: reader.call({"path": "d/secret.txt"})["content"],
                lambda: reader.call({"path": "f.txt"})["content"],
                lambda: writer.call({"path": "d/new.txt", "content": "w",
                                     "make_parents": False}) and "inside",
                lambda: appender.call({"path": "d/secret.txt", "content": "",
                                       "make_parents": False}) and "inside",
                lambda: writer.call({"path": "f.txt", "content": "inside-file",
                                     "make_parents": False}) and "inside",
            ):
                try:
                    content = action()
                except ToolError:
                    outcomes["refused"] += 1
                    continue
                assert content.startswith("inside"), content
                outcomes["ok"] += 1
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert errors == []
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "SECRET"
    # the race really happened both ways
    assert swaps[0] >= 50 and outcomes["ok"] >= 100 and outcomes["refused"] >= 100, (
        swaps, outcomes)
