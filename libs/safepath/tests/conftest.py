"""Test configuration of flowyard-safepath: every async test runs on both anyio backends; a
root under tmp_path and an outside directory to attack it from."""

from __future__ import annotations

import os
from pathlib import Path

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
    """The root (``<tmp>/r``); ``<tmp>/r_evil`` and ``<tmp>/outside`` sit next to it."""
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
    """A SafeRoot on ``root_dir`` without fsync, 1 MB per file, 5 MB in total."""
    return SafeRoot(root_dir, fsync=False, max_file_bytes=1_000_000, max_total_bytes=5_000_000)
