"""Fixtures of the filesystem plugin tests: a root under tmp_path and an outside directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flowyard.safepath import SafeRoot


@pytest.fixture
def root_dir(tmp_path: Path) -> Path:
    """The filesystem root (``<tmp>/r``); ``<tmp>/r_evil`` and ``<tmp>/outside`` sit next to it."""
    root = tmp_path / "r"
    root.mkdir()
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the root holding ``secret.txt``."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_text("SECRET")
    return out


@pytest.fixture
def safe_root(root_dir: Path) -> SafeRoot:
    return SafeRoot(root_dir, fsync=False, max_file_bytes=1_000_000, max_total_bytes=5_000_000)


@pytest.fixture
def fs_stack(flowyard_home: Path, root_dir: Path) -> Any:
    """A stack with the filesystem plugin, its root set to ``root_dir``."""
    from flowyard.stack import Stack
    from flowyard_filesystem import plugin

    return Stack(plugins=[("filesystem", plugin)],
                 config={"filesystem": {"root": str(root_dir), "fsync": False,
                                        "max_file_bytes": 1_000_000,
                                        "max_total_bytes": 5_000_000}})
