"""Attempts to leave the root through SafeRoot: traversal, absolute and encoded paths, prefix
tricks, NUL and oversize names, symlinks, and a path swapped between a check and an open.
(The same attacks through the filesystem tools are in plugins/filesystem/tests.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from flowyard.errors import ToolError
from flowyard_safepath import SafeRoot, UnsafePathError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TRAVERSALS = [
    "../outside/secret.txt",
    "../../etc/passwd",
    "a/../../outside/secret.txt",
    "./../outside/secret.txt",
    "..\\outside\\secret.txt",
    "a\\..\\..\\outside\\secret.txt",
    "..",
    "../r_evil/x",
]


def _tree(tmp_path: Path) -> list[Path]:
    """Every file and directory under tmp_path (to prove nothing appeared outside the root)."""
    return sorted(p for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_is_refused_for_every_action(path: str, safe_root: SafeRoot, outside: Path,
                                              tmp_path: Path) -> None:
    (tmp_path / "r_evil").mkdir()
    (safe_root.root / "a").mkdir()
    before = _tree(tmp_path)
    calls = [
        lambda: safe_root.read_bytes(path),
        lambda: safe_root.write_bytes(path, b"pwned"),
        lambda: safe_root.append_bytes(path, b"pwned"),
        lambda: safe_root.mkdir(path + "/sub"),
        lambda: safe_root.delete(path, recursive=True),
        lambda: safe_root.copy("a", path),
        lambda: safe_root.move("a", path),
        lambda: safe_root.list_dir(path),
        lambda: safe_root.stat(path),
    ]
    for attempt in calls:
        with pytest.raises(UnsafePathError, match="leaves the filesystem root"):
            attempt()
    assert _tree(tmp_path) == before
    assert (outside / "secret.txt").read_text() == "SECRET"


def test_absolute_paths(safe_root: SafeRoot, tmp_path: Path, outside: Path) -> None:
    root = safe_root.root
    (tmp_path / "r_evil").mkdir()
    # the prefix trick: /…/r_evil starts with the string /…/r but is not inside it
    for bad in [str(tmp_path / "r_evil" / "x"), str(outside / "secret.txt"), "/etc/passwd",
                str(root) + "_evil/x", "\\etc\\passwd"]:
        with pytest.raises(UnsafePathError, match="absolute path outside the filesystem root"):
            safe_root.write_bytes(bad, b"x")
    assert list((tmp_path / "r_evil").iterdir()) == []
    # an absolute path inside the root is accepted and used relative to it
    assert safe_root.write_bytes(str(root / "in" / "ok.txt"), b"ok") == 2
    assert (root / "in" / "ok.txt").read_bytes() == b"ok"
    assert safe_root.read_bytes(str(root / "in" / ".." / "in" / "ok.txt")) == b"ok"


def test_prefix_trick_through_a_root_given_with_a_trailing_slash(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r_evil").mkdir()
    root = SafeRoot(str(tmp_path / "r") + "/", fsync=False)
    with pytest.raises(UnsafePathError):
        root.write_bytes(str(tmp_path / "r_evil" / "x"), b"x")
    assert list((tmp_path / "r_evil").iterdir()) == []


def test_percent_encoded_forms_are_not_decoded(safe_root: SafeRoot, tmp_path: Path,
                                               outside: Path) -> None:
    """Decision (documented): no URL decoding. The encoded text is a literal file name, so it
    stays inside the root."""
    for name in ["%2e%2e%2foutside%2fx", "%2e%2e", "..%2f..%2fx", "%252e%252e%252f"]:
        safe_root.write_bytes(name, b"literal")
        assert (safe_root.root / name).read_bytes() == b"literal"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "r"]
    assert not (tmp_path / "outside" / "x").exists()


@pytest.mark.parametrize("path", ["a\x00b", "\x00", "ok/\x00/../x", "x.txt\x00.md"])
def test_nul_bytes_are_refused(path: str, safe_root: SafeRoot) -> None:
    with pytest.raises(UnsafePathError, match="NUL byte"):
        safe_root.write_bytes(path, b"x")
    with pytest.raises(UnsafePathError, match="NUL byte"):
        safe_root.read_bytes(path)
    assert os.listdir(safe_root.root) == []


def test_oversize_names_and_paths_are_refused(safe_root: SafeRoot) -> None:
    with pytest.raises(UnsafePathError, match="256 bytes long; the limit is 255"):
        safe_root.write_bytes("n" * 256, b"x")
    with pytest.raises(UnsafePathError, match="the limit is 255"):
        safe_root.write_bytes("é" * 128, b"x")  # 256 bytes of UTF-8
    with pytest.raises(UnsafePathError, match="the limit is 4096"):
        safe_root.write_bytes("/".join(["d" * 100] * 41), b"x")
    assert safe_root.write_bytes("n" * 255, b"x") == 1
    assert os.listdir(safe_root.root) == ["n" * 255]


# ----------------------------------------------------------------------------- symlinks


def test_symlinks_leaving_the_root_are_refused(safe_root: SafeRoot, outside: Path,
                                               tmp_path: Path) -> None:
    root = safe_root.root
    (root / "to_outside").symlink_to(outside)                       # absolute, a directory
    (root / "rel_outside").symlink_to("../outside")                 # relative
    (root / "secret_link").symlink_to(outside / "secret.txt")       # a file
    (root / "evil").symlink_to(tmp_path / "r_evil")                 # the prefix trick
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to("../../outside/secret.txt")    # climbs through a dir
    (root / "loop").symlink_to("loop")
    for path in ["to_outside/secret.txt", "rel_outside/secret.txt", "secret_link",
                 "sub/up", "evil/x"]:
        with pytest.raises(UnsafePathError):
            safe_root.read_bytes(path)
        with pytest.raises(UnsafePathError):
            safe_root.write_bytes(path, b"pwned")
        with pytest.raises(UnsafePathError):
            safe_root.append_bytes(path, b"pwned")
    with pytest.raises(UnsafePathError, match="too many levels of symbolic links"):
        safe_root.read_bytes("loop")
    with pytest.raises(UnsafePathError):
        safe_root.write_bytes("to_outside/new.txt", b"pwned")
    with pytest.raises(UnsafePathError):
        safe_root.list_dir("to_outside")
    with pytest.raises(UnsafePathError):
        safe_root.copy("secret_link", "copied.txt")
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "SECRET"
    assert not (tmp_path / "r_evil").exists()


def test_symlinks_inside_the_root_are_followed(safe_root: SafeRoot) -> None:
    root = safe_root.root
    (root / "real" / "deep").mkdir(parents=True)
    (root / "real" / "deep" / "f.txt").write_text("inside")
    (root / "alias").symlink_to("real/deep")
    (root / "abs_alias").symlink_to(root / "real")
    (root / "real" / "deep" / "back").symlink_to("../../real/deep/f.txt")
    assert safe_root.read_bytes("alias/f.txt") == b"inside"
    assert safe_root.read_bytes("abs_alias/deep/f.txt") == b"inside"
    assert safe_root.read_bytes("alias/back") == b"inside"
    # `..` after a link is resolved physically: alias/.. is real/, not the root
    assert safe_root.read_bytes("alias/../deep/f.txt") == b"inside"
    # writing through an in-root file link replaces the target's content
    safe_root.write_bytes("alias/back", b"new")
    assert (root / "real" / "deep" / "f.txt").read_text() == "new"


def test_delete_and_move_act_on_the_link_not_its_target(safe_root: SafeRoot,
                                                        outside: Path) -> None:
    root = safe_root.root
    (root / "link").symlink_to(outside)
    safe_root.move("link", "moved")
    assert (root / "moved").is_symlink()
    assert safe_root.delete("moved") == 1
    assert not (root / "moved").is_symlink()
    (root / "d").mkdir()
    (root / "d" / "link").symlink_to(outside)
    assert safe_root.delete("d", recursive=True) == 2
    assert (outside / "secret.txt").read_text() == "SECRET"


class _SwapAfterCheck(SafeRoot):
    """A SafeRoot that swaps a path for a symlink to ``outside`` at a precise moment: right
    after the path text was checked (``parts``), or right after the final component was
    found not to be a symlink (``_readlink`` returned None) and before it is opened."""

    def __init__(self, *args: Any, swap: Any, when: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.swap = swap
        self.when = when
        self.swapped = 0

    def parts(self, path: str) -> list[str]:
        result = super().parts(path)
        if self.when == "after-check":
            self.swap()
            self.swapped += 1
        return result

    def _readlink(self, dir_fd: int, name: str) -> str | None:  # type: ignore[override]
        result = SafeRoot._readlink(dir_fd, name)
        if self.when == "before-open" and result is None:
            self.swap()
            self.swapped += 1
        return result


def test_directory_swapped_between_check_and_open(root_dir: Path, outside: Path) -> None:
    (root_dir / "d").mkdir()
    (root_dir / "d" / "secret.txt").write_text("inside")

    def swap() -> None:
        os.rename(root_dir / "d", root_dir / "d_real")
        os.symlink(outside, root_dir / "d")

    def unswap() -> None:
        os.unlink(root_dir / "d")
        os.rename(root_dir / "d_real", root_dir / "d")

    root = _SwapAfterCheck(root_dir, swap=swap, when="after-check", fsync=False)
    with pytest.raises(UnsafePathError, match="points outside"):
        root.read_bytes("d/secret.txt")
    unswap()
    with pytest.raises(UnsafePathError, match="points outside"):
        root.write_bytes("d/new.txt", b"pwned")
    unswap()
    with pytest.raises(UnsafePathError, match="points outside"):
        root.delete("d/secret.txt")
    assert root.swapped == 3
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "SECRET"


def test_file_swapped_between_link_check_and_open(root_dir: Path, outside: Path) -> None:
    (root_dir / "f.txt").write_text("inside")

    def swap() -> None:
        if not (root_dir / "f.txt").is_symlink():
            os.replace(root_dir / "f.txt", root_dir / "f_real")
            os.symlink(outside / "secret.txt", root_dir / "f.txt")

    root = _SwapAfterCheck(root_dir, swap=swap, when="before-open", fsync=False)
    with pytest.raises(UnsafePathError, match="symbolic link that changed"):
        root.read_bytes("f.txt")
    assert root.swapped == 1
    # a write replaces the swapped-in link itself: the outside file is untouched
    os.unlink(root_dir / "f.txt")
    os.rename(root_dir / "f_real", root_dir / "f.txt")
    root.write_bytes("f.txt", b"new")
    assert (outside / "secret.txt").read_text() == "SECRET"
    assert not (root_dir / "f.txt").is_symlink() and (root_dir / "f.txt").read_text() == "new"
    # an append opens with O_NOFOLLOW and is refused
    os.replace(root_dir / "f.txt", root_dir / "f_real")
    (root_dir / "f.txt").write_text("again")
    with pytest.raises(UnsafePathError, match="symbolic link that changed"):
        root.append_bytes("f.txt", b"pwned")
    assert (outside / "secret.txt").read_text() == "SECRET"


_PIECES = ["..", ".", "a", "b", "", "%2e%2e", "..\\", "\\", "~", "r_evil", "outside", "é",
           "..%2f", " ", "link_out", "link_in"]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8),
       absolute=st.booleans())
def test_no_generated_path_escapes(pieces: list[str], absolute: bool, safe_root: SafeRoot,
                                   outside: Path, tmp_path: Path) -> None:
    """Any mix of traversal pieces either is refused or writes inside the root."""
    root = safe_root.root
    (root / "a").mkdir(exist_ok=True)
    if not (root / "link_out").is_symlink():
        (root / "link_out").symlink_to(outside)
        (root / "link_in").symlink_to("a")
    path = "/".join(pieces)
    if absolute:
        path = str(root) + "/" + path
    try:
        safe_root.write_bytes(path, b"generated")
    except ToolError:
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "r"]
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "SECRET"
