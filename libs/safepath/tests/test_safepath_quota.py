"""Size quotas, and no partial file left behind when a write fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flowyard.errors import ToolError
from flowyard_safepath import QuotaExceededError, SafeRoot


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".part" in p.name
                  or ".old" in p.name)


def test_per_file_quota(root_dir: Path) -> None:
    root = SafeRoot(root_dir, fsync=False, max_file_bytes=100)
    assert root.write_bytes("ok.bin", b"x" * 100) == 100
    with pytest.raises(QuotaExceededError, match=r"'big\.bin': 101 bytes exceeds the per-file "
                                                 "quota of 100 bytes"):
        root.write_bytes("big.bin", b"x" * 101)
    assert not (root_dir / "big.bin").exists()
    with pytest.raises(QuotaExceededError, match="per-file quota"):
        root.append_bytes("ok.bin", b"y")
    assert (root_dir / "ok.bin").read_bytes() == b"x" * 100
    assert _leftovers(root_dir) == []


def test_total_quota_counts_every_file_under_the_root(root_dir: Path) -> None:
    root = SafeRoot(root_dir, fsync=False, max_total_bytes=250)
    (root_dir / "sub").mkdir()
    (root_dir / "sub" / "existing.bin").write_bytes(b"e" * 100)
    root.write_bytes("a.bin", b"a" * 100)
    with pytest.raises(QuotaExceededError, match=r"total quota is 250 bytes \(200 used\)"):
        root.write_bytes("b.bin", b"b" * 51)
    assert not (root_dir / "b.bin").exists()
    # replacing a file only counts the difference
    root.write_bytes("a.bin", b"A" * 150)
    assert (root_dir / "a.bin").read_bytes() == b"A" * 150
    with pytest.raises(QuotaExceededError):
        root.append_bytes("a.bin", b"+")
    with pytest.raises(QuotaExceededError):
        root.copy("sub", "sub2")
    assert sorted(os.listdir(root_dir)) == ["a.bin", "sub"]
    assert _leftovers(root_dir) == []


def test_quota_enforced_while_streaming_without_a_size_hint(root_dir: Path) -> None:
    root = SafeRoot(root_dir, fsync=False, max_file_bytes=1000)
    (root_dir / "old.txt").write_text("keep me")

    def chunks() -> list[bytes]:
        return [b"z" * 400] * 3

    with pytest.raises(QuotaExceededError, match="size quota of 1000 bytes"):
        root.write_stream("old.txt", chunks())
    assert (root_dir / "old.txt").read_text() == "keep me"
    assert _leftovers(root_dir) == []


def test_failure_inside_the_content_source_removes_the_partial_file(root_dir: Path) -> None:
    root = SafeRoot(root_dir, fsync=False)
    (root_dir / "report.md").write_text("previous report")

    def chunks():  # type: ignore[no-untyped-def]
        yield b"first half\n"
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError, match="the producer failed"):
        root.write_stream("report.md", chunks())
    assert (root_dir / "report.md").read_text() == "previous report"
    assert os.listdir(root_dir) == ["report.md"]


_DISK_FULL = textwrap.dedent("""
    import json, os, resource, signal, sys
    from flowyard_safepath import SafeRoot
    from flowyard.errors import ToolError

    root_dir = sys.argv[1]
    root = SafeRoot(root_dir, fsync=False)
    root.write_bytes("keep.txt", b"old")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    out = {}
    for name, call in [
        ("replace", lambda: root.write_bytes("keep.txt", b"x" * 100_000)),
        ("create", lambda: root.write_bytes("new.bin", b"y" * 100_000)),
        ("append", lambda: root.append_bytes("keep.txt", b"z" * 100_000)),
        ("append_new", lambda: root.append_bytes("fresh.log", b"w" * 100_000)),
        ("copy", lambda: root.copy("big.src", "big.dst")),
    ]:
        try:
            call()
            out[name] = "no error"
        except ToolError as exc:
            out[name] = str(exc)
    out["listing"] = sorted(os.listdir(root_dir))
    out["keep"] = open(os.path.join(root_dir, "keep.txt")).read()
    print(json.dumps(out))
""")


def test_disk_full_leaves_no_partial_file(root_dir: Path) -> None:
    """A real write failure: the file-size limit (RLIMIT_FSIZE) makes write(2) fail with EFBIG
    part-way through, in a child process."""
    (root_dir / "big.src").write_bytes(b"s" * 50_000)
    proc = subprocess.run([sys.executable, "-c", _DISK_FULL, str(root_dir)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for name in ["replace", "create", "append", "append_new", "copy"]:
        assert "File too large" in out[name], (name, out[name])
    assert "cannot write 'keep.txt'" in out["replace"]
    assert out["keep"] == "old"  # the old content survived the failed replace and append
    assert out["listing"] == ["big.src", "keep.txt"]


def test_quota_configuration_is_validated(flowyard_home: Path) -> None:
    from flowyard.config import Config
    from flowyard.errors import ConfigError
    from flowyard_safepath import safe_root_from_config

    for bad in [0, -5, "10MB", True]:
        with pytest.raises(ConfigError, match=r"\[filesystem\] max_total_bytes"):
            safe_root_from_config(Config({"filesystem": {"max_total_bytes": bad}}))
    with pytest.raises(ConfigError, match=r"\[filesystem\] root"):
        safe_root_from_config(Config({"filesystem": {"root": ""}}))
    root = safe_root_from_config(Config({"filesystem": {"max_file_bytes": 7}}),
                                 defaults={"max_total_bytes": 9})
    assert (root.max_file_bytes, root.max_total_bytes) == (7, 9)
    with pytest.raises(ValueError, match="max_read_bytes must be a positive integer"):
        SafeRoot("/tmp/x", max_read_bytes=0)


def test_tool_error_is_not_retriable_for_quota(root_dir: Path) -> None:
    root = SafeRoot(root_dir, fsync=False, max_file_bytes=1)
    with pytest.raises(ToolError) as info:
        root.write_bytes("a", b"ab")
    assert info.value.retriable is False


def test_walk_limit_is_configurable_and_enforced(flowyard_home: Path, root_dir: Path) -> None:
    from flowyard.config import Config
    from flowyard_safepath import safe_root_from_config

    for i in range(5):
        (root_dir / f"f{i}").write_text("x")
    root = safe_root_from_config(Config({"filesystem": {"root": str(root_dir),
                                                        "max_walk_entries": 3,
                                                        "max_total_bytes": 100}}))
    assert root.max_walk_entries == 3
    with pytest.raises(ToolError, match="more than 3 entries"):
        root.write_bytes("g", b"y")
    assert not (root_dir / "g").exists()
