"""The file-count quota, and the total and file-count quotas holding across processes (the
advisory ``flock`` on the root directory), tried as an attacker would: real processes racing
for the same root, thousands of empty files, a lock held by someone else, and a hypothesis
property over sequences of writes and deletes."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from flowyard.errors import ConfigError, ToolError
from flowyard_safepath import QuotaExceededError, SafeRoot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MB = 1_000_000


def _disk(root: Path) -> tuple[int, int]:
    """``(bytes of regular files, non-directory entries)`` under ``root``, temporary files
    included, without following links; entries vanishing while counted are skipped."""
    size = files = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            files += 1
            if not os.path.islink(os.path.join(dirpath, name)):
                size += st.st_size
    return size, files


_WRITER = textwrap.dedent("""
    import json, os, sys, time
    from flowyard_safepath import SafeRoot, QuotaExceededError

    root_dir, name, go = sys.argv[1], sys.argv[2], sys.argv[3]
    root = SafeRoot(root_dir, fsync=False, max_total_bytes=5_000_000, max_files=1000)
    while not os.path.exists(go):
        time.sleep(0.001)

    def chunks():
        # slow producer: widens the window between the quota check and the rename
        for _ in range(4):
            time.sleep(0.05)
            yield b"x" * 500_000

    try:
        written = root.write_stream(name, chunks())
        print(json.dumps({"ok": written}))
    except QuotaExceededError as exc:
        print(json.dumps({"quota": str(exc)}))
""")


def test_four_processes_cannot_exceed_the_total_quota(tmp_path: Path, root_dir: Path) -> None:
    """Four processes each stream 2 MB into a root with a 5 MB quota, released together: two
    succeed, two get the quota error, and the bytes on disk (temporary files included) never
    exceed 5 MB at any sample."""
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(root_dir), f"w{i}.bin",
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(4)]
    time.sleep(0.5)  # let every child import and reach the start line
    go.touch()
    peak = 0
    while any(p.poll() is None for p in procs):
        peak = max(peak, _disk(root_dir)[0])
        time.sleep(0.002)
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    peak = max(peak, _disk(root_dir)[0])
    assert peak <= 5 * MB
    assert sorted("ok" if "ok" in r else "quota" for r in results) == ["ok", "ok", "quota",
                                                                       "quota"]
    for r in results:
        if "quota" in r:
            assert "total quota of 5000000 bytes" in r["quota"], r
    assert _disk(root_dir) == (4 * MB, 2)
    assert not [n for n in os.listdir(root_dir) if n.endswith(".part")]


_HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def test_a_write_waits_for_the_lock_another_process_holds(root_dir: Path) -> None:
    """The lock is really the root's ``flock``: while another process holds it, a quota'd
    write fails (retriable) after ``lock_timeout``; a write without shared quotas does not
    wait; once the holder exits, the write goes through."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(root_dir), "1.5"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        root = SafeRoot(root_dir, fsync=False, max_files=10, lock_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(ToolError, match="is busy: another writer held its quota lock") \
                as info:
            root.write_bytes("a.txt", b"a")
        assert info.value.retriable is True
        assert time.monotonic() - started >= 0.3
        assert not (root_dir / "a.txt").exists()
        SafeRoot(root_dir, fsync=False, max_file_bytes=10).write_bytes("free.txt", b"f")
    finally:
        holder.wait(timeout=30)
    root.write_bytes("a.txt", b"a")
    assert sorted(os.listdir(root_dir)) == ["a.txt", "free.txt"]  # no lock file either


def test_the_lock_is_released_and_held_by_no_descriptor_after_a_write(root_dir: Path) -> None:
    root = SafeRoot(root_dir, fsync=False, max_total_bytes=100, max_files=3)
    root.write_bytes("a", b"1")
    with pytest.raises(QuotaExceededError):
        root.write_bytes("b", b"x" * 200)
    fd = os.open(root_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again after success and refusal
    finally:
        os.close(fd)


def test_three_thousand_empty_files_refused_from_the_1001st(root_dir: Path) -> None:
    root = SafeRoot(root_dir, fsync=False, max_files=1000)
    refused: list[int] = []
    for i in range(1, 3001):
        try:
            root.write_bytes(f"d{i % 7}/e{i}", b"")
        except QuotaExceededError as exc:
            if not refused:
                assert str(exc) == (
                    f"'d{i % 7}/e{i}': creating 1 more file(s) would bring the filesystem "
                    "root to 1001 files; the file-count quota (max_files) is 1000 files "
                    "(1000 used)")
            refused.append(i)
    assert refused == list(range(1001, 3001))
    assert root.file_count() == 1000 == _disk(root_dir)[1]
    # replacing an existing file is not a new file; deleting one makes room for one
    root.write_bytes("d1/e1", b"again")
    root.delete("d1/e1")
    root.write_bytes("new", b"")
    with pytest.raises(QuotaExceededError, match=r"quota \(max_files\) is 1000 files"):
        root.append_bytes("log", b"x")


def test_file_count_quota_covers_append_copy_and_links(root_dir: Path, outside: Path) -> None:
    root = SafeRoot(root_dir, fsync=False, max_files=4)
    (root_dir / "link").symlink_to(outside / "secret.txt")  # a symlink counts as a file
    root.write_bytes("tree/a", b"a")
    root.append_bytes("tree/b", b"b")
    assert root.file_count() == 3
    with pytest.raises(QuotaExceededError, match=r"'copy': creating 2 more file\(s\)"):
        root.copy("tree", "copy")
    assert sorted(os.listdir(root_dir)) == ["link", "tree"]
    root.copy("tree/a", "c")
    with pytest.raises(QuotaExceededError, match="max_files"):
        root.copy("tree/a", "d")
    with pytest.raises(QuotaExceededError, match="max_files"):
        root.append_bytes("e", b"e")
    root.append_bytes("c", b"more")  # appending to an existing file adds no file
    root.delete("c")
    root.copy("tree/b", "tree/a", overwrite=True)  # replacing: no new file
    assert root.file_count() == 3


def test_max_files_from_configuration(flowyard_home: Path, root_dir: Path) -> None:
    from flowyard.config import Config
    from flowyard_safepath import safe_root_from_config

    root = safe_root_from_config(Config({"filesystem": {"root": str(root_dir),
                                                        "max_files": 2}}))
    assert root.max_files == 2
    for bad in [0, -1, "many", True, 1.5]:
        with pytest.raises(ConfigError, match=r"\[filesystem\] max_files must be a positive "
                                              r"integer \(files\)"):
            safe_root_from_config(Config({"filesystem": {"max_files": bad}}))
    with pytest.raises(ValueError, match="max_files must be a positive integer"):
        SafeRoot(root_dir, max_files=0)
    with pytest.raises(ValueError, match="lock_timeout must be a positive number"):
        SafeRoot(root_dir, lock_timeout=0)
    assert SafeRoot(root_dir).max_files is None  # the library default stays unlimited


_NAMES = st.sampled_from(["a", "b", "d/c", "d/e", "f/g/h"])
_OPS = st.lists(st.one_of(
    st.tuples(st.just("write"), _NAMES, st.integers(0, 400)),
    st.tuples(st.just("append"), _NAMES, st.integers(0, 400)),
    st.tuples(st.just("delete"), _NAMES, st.just(0)),
    st.tuples(st.just("copy"), _NAMES, st.sampled_from([0, 1])),
), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_property_usage_never_exceeds_the_quotas(ops: list[tuple[str, str, int]]) -> None:
    """Whatever sequence of writes, appends, deletes and copies is tried, the bytes and the
    files under the root stay within the quotas after every step, and every refusal is a
    quota error that leaves the root unchanged."""
    with tempfile.TemporaryDirectory() as tmp:
        root_dir = Path(tmp)
        root = SafeRoot(root_dir, fsync=False, max_total_bytes=1000, max_files=3)
        names = ["a", "b", "d/c", "d/e", "f/g/h"]
        for op, name, arg in ops:
            before = _disk(root_dir)
            try:
                if op == "write":
                    root.write_bytes(name, b"w" * arg)
                elif op == "append":
                    root.append_bytes(name, b"p" * arg)
                elif op == "delete":
                    root.delete(name, missing_ok=True)
                else:
                    other = names[(names.index(name) + 1 + arg) % len(names)]
                    root.copy(name, other, overwrite=True)
            except QuotaExceededError:
                assert _disk(root_dir) == before
            except ToolError as exc:  # copying a missing file
                assert "does not exist" in str(exc), exc
            size, files = _disk(root_dir)
            assert size <= 1000 and files <= 3, (op, name, arg, size, files)
            assert (size, files) == (root.usage(), root.file_count())
