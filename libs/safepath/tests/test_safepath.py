"""flowyard_safepath on its own: lookups, root selection, content decoding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flowyard.config import Config
from flowyard.errors import ToolError, ToolInputError
from flowyard_safepath import SafeRoot, decode_content, workspace_root


def test_stat_resolve_and_location(safe_root: SafeRoot, outside: Path) -> None:
    root = safe_root.root
    (root / "real").mkdir()
    (root / "real" / "f.txt").write_text("abc")
    (root / "alias").symlink_to("real")
    (root / "out").symlink_to(outside)
    info = safe_root.stat("alias/f.txt")
    assert info is not None and (info.path, info.type, info.size) == ("real/f.txt", "file", 3)
    link = safe_root.stat("alias", follow_symlinks=False)
    assert link is not None and link.type == "symlink"
    # a link that leaves the root can be seen as a link but not followed
    out = safe_root.stat("out", follow_symlinks=False)
    assert out is not None and out.type == "symlink"
    with pytest.raises(ToolInputError, match="points outside"):
        safe_root.stat("out")
    assert safe_root.resolve("alias/../real/./f.txt") == "real/f.txt"
    assert safe_root.location("alias/f.txt") == root / "real" / "f.txt"
    assert safe_root.location(".") == root
    root_info = safe_root.stat(".")
    assert root_info is not None and (root_info.path, root_info.type) == (".", "directory")
    assert [e.path for e in safe_root.walk()] == ["alias", "out", "real", "real/f.txt"]


def test_root_is_created_on_first_use_unless_told_not_to(tmp_path: Path) -> None:
    lazy = SafeRoot(tmp_path / "new" / "root", fsync=False)
    assert not (tmp_path / "new").exists()
    lazy.write_bytes("x", b"1")
    assert (tmp_path / "new" / "root" / "x").read_bytes() == b"1"
    strict = SafeRoot(tmp_path / "absent", create=False)
    with pytest.raises(ToolError, match=r"the filesystem root .* does not exist"):
        strict.read_bytes("x")
    assert not (tmp_path / "absent").exists()


def test_workspace_root_precedence(flowyard_home: Path, tmp_path: Path) -> None:
    data_dir = Config({"paths": {"data_dir": str(tmp_path / "data")}})
    assert workspace_root(data_dir) == tmp_path / "data" / "workspace"
    both = Config({"filesystem": {"root": str(tmp_path / "fs")},
                   "report": {"root": str(tmp_path / "rep")}})
    assert workspace_root(both, "report") == tmp_path / "rep"
    assert workspace_root(both, "filesystem") == tmp_path / "fs"
    only_fs = Config({"filesystem": {"root": "rel/dir"}})
    assert workspace_root(only_fs, "report") == flowyard_home / "rel" / "dir"


def test_decode_content() -> None:
    assert decode_content("aGk=", "base64", path="p") == b"hi"
    assert decode_content("é", "latin-1", path="p") == b"\xe9"
    with pytest.raises(ToolInputError, match="'p': content is not valid base64"):
        decode_content("not base64!", "base64", path="p")
    with pytest.raises(ToolInputError, match="unknown text encoding 'klingon'"):
        decode_content("x", "klingon", path="p")
    with pytest.raises(ToolInputError, match="cannot be encoded as ascii"):
        decode_content("é", "ascii", path="p")


def test_os_refusals_become_tool_errors_naming_the_path(safe_root: SafeRoot) -> None:
    # a link whose target name is longer than the kernel accepts (ENAMETOOLONG)
    (safe_root.root / "long").symlink_to("x" * 300)
    with pytest.raises(ToolError, match=r"cannot open 'long/f\.txt': File name too long"):
        safe_root.read_bytes("long/f.txt")
    with pytest.raises(ToolError, match=r"cannot open 'long/new\.txt'"):
        safe_root.write_bytes("long/new.txt", b"x")
    assert sorted(os.listdir(safe_root.root)) == ["long"]
