"""Cost of confinement: flowyard_safepath (the filesystem and report tools) against plain
Python file access measured in the same run.

Cases (each a ratio against its baseline; fsync off on both sides so the disk does not
dominate):

* read a 4 KiB file three directories deep: ``SafeRoot.read_bytes`` vs ``open().read()``;
* write it: ``SafeRoot.write_bytes`` (dir_fd walk, temp file, rename) vs a plain
  ``open(..., "wb").write`` and vs a plain atomic write (``tempfile`` + ``os.replace``);
* the same write with a total quota, which sums the sizes under the root, for a root of
  ``--files`` files;
* ``filesystem.glob("**/*.md")`` vs ``pathlib.Path.rglob("*.md")`` over that root.

Usage: .venv/bin/python benchmarks/filesystem_safepath.py [--runs 2000] [--files 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flowyard_safepath import SafeRoot
from flowyard_filesystem.tools import GlobTool


def per_call(fn: Callable[[], object], runs: int, repeats: int = 5) -> float:
    """Median over ``repeats`` batches of the mean seconds per call."""
    batches = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(runs):
            fn()
        batches.append((time.perf_counter() - started) / runs)
    return statistics.median(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    payload = os.urandom(4096)
    with tempfile.TemporaryDirectory() as tmp:
        root_dir = Path(tmp) / "root"
        target = root_dir / "a" / "b" / "c" / "f.bin"
        target.parent.mkdir(parents=True)
        target.write_bytes(payload)
        rel = "a/b/c/f.bin"
        safe = SafeRoot(root_dir, fsync=False)

        def plain_read() -> bytes:
            with open(target, "rb") as fh:
                return fh.read()

        def plain_write() -> None:
            with open(target, "wb") as fh:
                fh.write(payload)

        def plain_atomic() -> None:
            fd, tmp_name = tempfile.mkstemp(dir=target.parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            os.replace(tmp_name, target)

        rows: list[tuple[str, float, float]] = []
        base_read = per_call(plain_read, args.runs)
        rows.append(("read 4 KiB", per_call(lambda: safe.read_bytes(rel), args.runs),
                     base_read))
        base_write = per_call(plain_write, args.runs)
        base_atomic = per_call(plain_atomic, args.runs)
        safe_write = per_call(lambda: safe.write_bytes(rel, payload), args.runs)
        rows.append(("write 4 KiB vs open().write", safe_write, base_write))
        rows.append(("write 4 KiB vs tempfile+replace", safe_write, base_atomic))

        for i in range(args.files):
            sub = root_dir / "tree" / f"d{i % 20}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"f{i}.{'md' if i % 2 else 'txt'}").write_bytes(b"x" * 100)
        quota = SafeRoot(root_dir, fsync=False, max_total_bytes=10**9)
        runs_q = max(1, args.runs // 20)
        rows.append((f"write with total quota ({args.files} files) vs no quota",
                     per_call(lambda: quota.write_bytes(rel, payload), runs_q),
                     per_call(lambda: safe.write_bytes(rel, payload), runs_q)))
        glob = GlobTool(safe)
        runs_g = max(1, args.runs // 100)
        rows.append((f"glob **/*.md ({args.files} files) vs Path.rglob",
                     per_call(lambda: glob.call({"pattern": "**/*.md", "limit": 100_000}),
                              runs_g),
                     per_call(lambda: sorted(root_dir.rglob("*.md")), runs_g)))

    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  {'flowyard':>11}  {'baseline':>11}  ratio")
    for name, ours, base in rows:
        print(f"{name:<{width}}  {ours * 1e6:9.1f}us  {base * 1e6:9.1f}us  {ours / base:5.2f}x")


if __name__ == "__main__":
    main()
