"""Test configuration of flowyard-filesystem: every async test runs on both anyio backends; a
root under tmp_path and an outside directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from flowyard_safepath import SafeRoot

# Real models are loaded from installed packages only; never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on asyncio and once on trio."""
    return str(request.param)


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
