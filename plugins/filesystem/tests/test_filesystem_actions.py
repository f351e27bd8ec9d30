"""Behaviour of the ten filesystem actions, called through a stack like a workflow would."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from flowyard.context import ToolContext
from flowyard.errors import ConfigError, ToolError, ToolInputError
from flowyard_filesystem.plugin import TOOL_NAMES
from flowyard_filesystem.tools import glob_match

pytestmark = pytest.mark.anyio


async def call(stack: Any, action: str, **arguments: Any) -> Any:
    tool = stack.tools.get(f"filesystem.{action}")
    return await tool.invoke(arguments, ToolContext(stack=stack))


async def test_registers_all_actions_with_declared_effects(fs_stack: Any) -> None:
    names = {n for n in fs_stack.tools.names() if n.startswith("filesystem.")}
    assert names == {f"filesystem.{a}" for a in TOOL_NAMES}
    read_only = {"read", "list", "glob", "exists"}
    for action in TOOL_NAMES:
        tool = fs_stack.tools.get(f"filesystem.{action}")
        assert tool.name == f"filesystem.{action}"
        assert (tuple(tool.side_effects) == ()) == (action in read_only)
    assert fs_stack.tools.get("filesystem.append").idempotent is False
    assert fs_stack.tools.get("filesystem.move").idempotent is False
    assert fs_stack.tools.get("filesystem.write").idempotent is True


async def test_write_read_text_and_binary(fs_stack: Any, root_dir: Path) -> None:
    assert await call(fs_stack, "write", path="notes/a.txt", content="héllo\n") == {
        "path": "notes/a.txt", "bytes_written": 7,
        "location": str(root_dir / "notes" / "a.txt")}
    assert (root_dir / "notes" / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    got = await call(fs_stack, "read", path="notes/a.txt")
    assert got == {"path": "notes/a.txt", "content": "héllo\n", "encoding": "utf-8", "size": 7}

    blob = bytes(range(256))
    await call(fs_stack, "write", path="b.bin", content=base64.b64encode(blob).decode(),
               encoding="base64")
    assert (root_dir / "b.bin").read_bytes() == blob
    got = await call(fs_stack, "read", path="b.bin", encoding="base64")
    assert base64.b64decode(got["content"]) == blob and got["size"] == 256
    with pytest.raises(ToolError, match=r"'b.bin' is not valid utf-8 text.*base64"):
        await call(fs_stack, "read", path="b.bin")
    with pytest.raises(ToolInputError, match="not valid base64"):
        await call(fs_stack, "write", path="c.bin", content="@@@", encoding="base64")
    assert not (root_dir / "c.bin").exists()


async def test_write_overwrite_false_and_directory_target(fs_stack: Any, root_dir: Path) -> None:
    await call(fs_stack, "write", path="a.txt", content="one")
    with pytest.raises(ToolError, match=r"'a\.txt' already exists"):
        await call(fs_stack, "write", path="a.txt", content="two", overwrite=False)
    assert (root_dir / "a.txt").read_text() == "one"
    (root_dir / "dir").mkdir()
    with pytest.raises(ToolError, match="'dir' is a directory"):
        await call(fs_stack, "write", path="dir", content="x")
    with pytest.raises(ToolError, match="does not exist"):
        await call(fs_stack, "write", path="missing/x.txt", content="x", make_parents=False)
    assert sorted(os.listdir(root_dir)) == ["a.txt", "dir"]


async def test_write_keeps_the_mode_of_the_replaced_file(fs_stack: Any, root_dir: Path) -> None:
    (root_dir / "run.sh").write_text("old")
    (root_dir / "run.sh").chmod(0o750)
    await call(fs_stack, "write", path="run.sh", content="new")
    assert (root_dir / "run.sh").stat().st_mode & 0o777 == 0o750


async def test_append_creates_then_extends(fs_stack: Any, root_dir: Path) -> None:
    assert (await call(fs_stack, "append", path="log/x.log", content="a\n"))["size"] == 2
    got = await call(fs_stack, "append", path="log/x.log", content="bc\n")
    assert got == {"path": "log/x.log", "bytes_appended": 3, "size": 5,
                   "location": str(root_dir / "log" / "x.log")}
    assert (root_dir / "log" / "x.log").read_text() == "a\nbc\n"


async def test_read_errors_name_the_path(fs_stack: Any, root_dir: Path) -> None:
    with pytest.raises(ToolError, match=r"'nope\.txt' does not exist") as info:
        await call(fs_stack, "read", path="nope.txt")
    assert info.value.tool == "filesystem.read"
    (root_dir / "d").mkdir()
    with pytest.raises(ToolError, match="'d' is a directory"):
        await call(fs_stack, "read", path="d")
    (root_dir / "big.txt").write_text("x" * 100)
    with pytest.raises(ToolError, match=r"'big\.txt' is 100 bytes; the read limit is 10"):
        await call(fs_stack, "read", path="big.txt", max_bytes=10)


async def test_read_refuses_a_fifo_without_blocking(fs_stack: Any, root_dir: Path) -> None:
    os.mkfifo(root_dir / "pipe")
    with pytest.raises(ToolError, match="'pipe' is not a regular file"):
        await call(fs_stack, "read", path="pipe")


async def test_list_and_exists(fs_stack: Any, root_dir: Path) -> None:
    (root_dir / "sub").mkdir()
    (root_dir / "sub" / "b.txt").write_text("bb")
    (root_dir / "a.txt").write_text("a")
    listing = await call(fs_stack, "list")
    assert [(e["name"], e["type"], e["size"]) for e in listing["entries"]] == [
        ("a.txt", "file", 1), ("sub", "directory", 0)]
    assert listing["truncated"] is False
    sub = await call(fs_stack, "list", path="sub")
    assert [e["path"] for e in sub["entries"]] == ["sub/b.txt"]
    limited = await call(fs_stack, "list", limit=1)
    assert len(limited["entries"]) == 1 and limited["truncated"] is True
    assert await call(fs_stack, "exists", path="sub/b.txt") == {
        "path": "sub/b.txt", "exists": True, "type": "file", "size": 2}
    assert await call(fs_stack, "exists", path="sub/zz") == {
        "path": "sub/zz", "exists": False, "type": None, "size": None}
    assert (await call(fs_stack, "exists", path="nope/deeper/x"))["exists"] is False
    with pytest.raises(ToolError, match="not a directory"):
        await call(fs_stack, "list", path="a.txt")


async def test_glob(fs_stack: Any, root_dir: Path) -> None:
    for rel in ["a.md", "b.txt", "docs/c.md", "docs/deep/d.md", "docs/.hidden.md",
                ".git/e.md", "data/1.csv", "data/x.csv"]:
        (root_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (root_dir / rel).write_text(rel)

    async def matches(pattern: str, **kw: Any) -> list[str]:
        return (await call(fs_stack, "glob", pattern=pattern, **kw))["matches"]

    assert await matches("*.md") == ["a.md"]
    assert await matches("**/*.md") == ["a.md", "docs/c.md", "docs/deep/d.md"]
    assert await matches("**/*.md", include_hidden=True) == [
        ".git/e.md", "a.md", "docs/.hidden.md", "docs/c.md", "docs/deep/d.md"]
    assert await matches("docs/*.md") == ["docs/c.md"]
    assert await matches("data/[0-9]*.csv") == ["data/1.csv"]
    assert await matches("*.md", path="docs") == ["docs/c.md"]
    assert await matches("*", type="directory") == ["data", "docs"]
    assert await matches("nothere/*.md") == []
    got = await call(fs_stack, "glob", pattern="**/*", type="file", limit=2)
    assert len(got["matches"]) == 2 and got["truncated"] is True
    for bad in ["../*", "/etc/*", "a\x00b"]:
        with pytest.raises(ToolInputError):
            await matches(bad)


def test_glob_match_rules() -> None:
    assert glob_match(["a", "b", "c.md"], ["**", "*.md"])
    assert glob_match(["c.md"], ["**", "*.md"])
    assert not glob_match(["a", "c.txt"], ["**", "*.md"])
    assert glob_match(["a", "x", "y", "b"], ["a", "**", "b"])
    assert not glob_match([".env"], ["*"])
    assert glob_match([".env"], [".*"])
    assert glob_match([".env"], ["*"], include_hidden=True)
    assert not glob_match(["A.MD"], ["*.md"])


async def test_mkdir(fs_stack: Any, root_dir: Path) -> None:
    assert await call(fs_stack, "mkdir", path="a/b/c") == {"path": "a/b/c", "created": True}
    assert (root_dir / "a" / "b" / "c").is_dir()
    assert (await call(fs_stack, "mkdir", path="a/b/c"))["created"] is False
    with pytest.raises(ToolError, match="'a/b/c' already exists"):
        await call(fs_stack, "mkdir", path="a/b/c", exist_ok=False)
    with pytest.raises(ToolError, match="does not exist"):
        await call(fs_stack, "mkdir", path="x/y", parents=False)
    (root_dir / "f").write_text("")
    with pytest.raises(ToolError, match="'f' exists and is not a directory"):
        await call(fs_stack, "mkdir", path="f")


async def test_copy_file_and_tree(fs_stack: Any, root_dir: Path) -> None:
    (root_dir / "src" / "sub").mkdir(parents=True)
    (root_dir / "src" / "a.txt").write_text("aaa")
    (root_dir / "src" / "sub" / "b.bin").write_bytes(b"\x00" * 10)
    got = await call(fs_stack, "copy", source="src/a.txt", destination="one/a.txt")
    assert got["bytes_copied"] == 3 and (root_dir / "one" / "a.txt").read_text() == "aaa"
    got = await call(fs_stack, "copy", source="src", destination="dst")
    assert got["bytes_copied"] == 13
    assert (root_dir / "dst" / "sub" / "b.bin").read_bytes() == b"\x00" * 10
    with pytest.raises(ToolError, match="'dst' already exists"):
        await call(fs_stack, "copy", source="src", destination="dst")
    (root_dir / "src" / "a.txt").write_text("changed")
    await call(fs_stack, "copy", source="src", destination="dst", overwrite=True)
    assert (root_dir / "dst" / "a.txt").read_text() == "changed"
    with pytest.raises(ToolError, match="into itself"):
        await call(fs_stack, "copy", source="src", destination="src/inner")
    with pytest.raises(ToolError, match="'ghost' does not exist"):
        await call(fs_stack, "copy", source="ghost", destination="g2")
    assert not any(n.endswith(".part") for n in os.listdir(root_dir))


async def test_move(fs_stack: Any, root_dir: Path) -> None:
    (root_dir / "a.txt").write_text("a")
    (root_dir / "b.txt").write_text("b")
    assert await call(fs_stack, "move", source="a.txt", destination="x/y.txt") == {
        "source": "a.txt", "destination": "x/y.txt"}
    assert not (root_dir / "a.txt").exists() and (root_dir / "x" / "y.txt").read_text() == "a"
    with pytest.raises(ToolError, match=r"'b\.txt' already exists"):
        await call(fs_stack, "move", source="x/y.txt", destination="b.txt")
    await call(fs_stack, "move", source="x/y.txt", destination="b.txt", overwrite=True)
    assert (root_dir / "b.txt").read_text() == "a"
    with pytest.raises(ToolError, match="into itself"):
        await call(fs_stack, "move", source="x", destination="x/inner")
    with pytest.raises(ToolInputError, match="refusing to move the filesystem root"):
        await call(fs_stack, "move", source=".", destination="elsewhere")


async def test_delete(fs_stack: Any, root_dir: Path) -> None:
    (root_dir / "d" / "e").mkdir(parents=True)
    (root_dir / "d" / "e" / "f.txt").write_text("f")
    (root_dir / "g.txt").write_text("g")
    assert await call(fs_stack, "delete", path="g.txt") == {"path": "g.txt", "deleted": 1}
    with pytest.raises(ToolError, match="'d' is a directory that is not empty"):
        await call(fs_stack, "delete", path="d")
    assert (await call(fs_stack, "delete", path="d", recursive=True))["deleted"] == 3
    assert os.listdir(root_dir) == []
    with pytest.raises(ToolError, match="'d' does not exist"):
        await call(fs_stack, "delete", path="d")
    assert (await call(fs_stack, "delete", path="d", missing_ok=True))["deleted"] == 0
    (root_dir / "k").mkdir()
    for root_path in [".", "", "k/..", "/" + str(root_dir).lstrip("/")]:
        with pytest.raises(ToolInputError):
            await call(fs_stack, "delete", path=root_path, recursive=True)
    assert (root_dir / "k").is_dir()


async def test_read_only_root_refuses_changes(flowyard_home: Path, root_dir: Path) -> None:
    from flowyard.stack import Stack
    from flowyard_filesystem import plugin

    (root_dir / "a.txt").write_text("a")
    stack = Stack(plugins=[("filesystem", plugin)],
                  config={"filesystem": {"root": str(root_dir), "read_only": True}})
    assert (await call(stack, "read", path="a.txt"))["content"] == "a"
    for action, args in [("write", {"path": "a.txt", "content": "b"}),
                         ("delete", {"path": "a.txt"}),
                         ("mkdir", {"path": "m"})]:
        with pytest.raises(ToolError, match="read-only"):
            await call(stack, action, **args)
    assert os.listdir(root_dir) == ["a.txt"] and (root_dir / "a.txt").read_text() == "a"


async def test_default_root_is_workspace_under_data_dir(flowyard_home: Path) -> None:
    from flowyard.stack import Stack
    from flowyard_filesystem import plugin

    stack = Stack(plugins=[("filesystem", plugin)])
    await call(stack, "write", path="hello.txt", content="hi")
    expected = Path(os.environ["FLOWYARD_DATA_DIR"]) / "workspace" / "hello.txt"
    assert expected.read_text() == "hi"
    assert not (flowyard_home / "hello.txt").exists()  # never the current directory


def test_bad_configuration_is_reported(flowyard_home: Path) -> None:
    from flowyard.config import Config
    from flowyard.registry import Register, Registry
    from flowyard_filesystem import plugin

    registry: Registry[Any] = Registry("tool")
    with pytest.raises(ConfigError, match=r"\[filesystem\] read_only"):
        plugin.register_tools(Register(registry, "filesystem"),
                              Config({"filesystem": {"read_only": "maybe"}}))
    plugin.register_tools(Register(registry, "filesystem"),
                          Config({"filesystem": {"max_file_bytes": -1}}))
    with pytest.raises(ConfigError, match=r"\[filesystem\] max_file_bytes"):
        registry.get("filesystem.read")


async def test_a_file_used_as_a_directory(fs_stack: Any, root_dir: Path) -> None:
    (root_dir / "a.txt").write_text("a")
    assert (await call(fs_stack, "exists", path="a.txt/b"))["exists"] is False
    with pytest.raises(ToolError, match=r"'a\.txt/b': 'a\.txt' is not a directory"):
        await call(fs_stack, "read", path="a.txt/b")
    with pytest.raises(ToolError, match=r"'a\.txt' is not a directory"):
        await call(fs_stack, "write", path="a.txt/b", content="x")
    assert (root_dir / "a.txt").read_text() == "a"
