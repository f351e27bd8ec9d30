"""Hook implementations of ``flowyard-filesystem`` (cheap to import: the tools are built on
first lookup).

Configuration, table ``[filesystem]`` of ``flowyard.toml`` (or ``FLOWYARD_FILESYSTEM__KEY``):

``root``             the directory the tools may touch (default ``<data_dir>/workspace``)
``max_file_bytes``   per-file quota in bytes (default 100 MiB)
``max_total_bytes``  quota on all regular files under the root, in bytes (default 1 GiB)
``max_read_bytes``   largest file ``filesystem.read`` returns, in bytes (default 20 MiB)
``max_files``        quota on the number of files under the root: every entry that is not a
                     directory (default 100,000 files)
``max_walk_entries`` most entries a tree walk visits (glob, directory copy, the total-quota
                     sum; default 200,000)
``read_only``        true: the tools that change files refuse (default false)
``fsync``            flush each written file to disk before it replaces the old one, and its
                     directory after the rename (default true)

The total and file-count quotas hold across processes: writes to one root are serialized by
an advisory ``flock`` on the root directory (POSIX only; see :mod:`flowyard_safepath._root`).
"""

from __future__ import annotations

import threading
from typing import Any

from flowyard import Config, ConfigError, Register, hookimpl

DEFAULT_LIMITS = {
    "max_file_bytes": 100 * 1024 * 1024,
    "max_total_bytes": 1024 * 1024 * 1024,
    "max_read_bytes": 20 * 1024 * 1024,
    "max_files": 100_000,
}

TOOL_NAMES = ("read", "write", "append", "list", "glob", "exists", "mkdir", "copy", "move",
              "delete")


class _Shared:
    """One SafeRoot per stack, built on first use (building it reads the configuration)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._root: Any = None
        self._lock = threading.Lock()

    def root(self) -> Any:
        with self._lock:
            if self._root is None:
                from flowyard_safepath import safe_root_from_config

                self._root = safe_root_from_config(self.config, "filesystem",
                                                   defaults=dict(DEFAULT_LIMITS))
            return self._root


@hookimpl
def register_tools(register: Register, config: Config) -> None:
    """Register ``filesystem.<action>`` for each action in :data:`TOOL_NAMES`.

    Raises:
        ConfigError: ``[filesystem] read_only`` is not a boolean.
    """
    read_only = config.section("filesystem").get("read_only", False)
    if not isinstance(read_only, bool):
        raise ConfigError(f"[filesystem] read_only must be true or false, got {read_only!r}")
    shared = _Shared(config)

    def factory(index: int) -> Any:
        def make() -> Any:
            from flowyard_filesystem.tools import ALL_TOOLS

            return ALL_TOOLS[index](shared.root(), read_only=read_only)

        return make

    for index, action in enumerate(TOOL_NAMES):
        register(f"filesystem.{action}", factory=factory(index))
