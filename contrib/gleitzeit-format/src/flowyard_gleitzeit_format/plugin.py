"""The plugin module named by the entry point ``gleitzeit``: the ``gleitzeit`` workflow
loader (Gleitzeit files, claimed by content) and the ``gleitzeit.files`` tool that batch
workflows and ``file_path`` parameters use at run time. Imports only flowyard's public API.
"""

from __future__ import annotations

from typing import Any

import flowyard

from flowyard_gleitzeit_format.files import FilesTool
from flowyard_gleitzeit_format.translate import GleitzeitLoader, Settings


@flowyard.hookimpl
def register_workflow_loaders(register: Any, config: flowyard.Config) -> None:
    """Register the ``gleitzeit`` loader for ``.yaml``, ``.yml`` and ``.json`` files; it
    claims a file only when its content is a Gleitzeit workflow (``sniff``).
    """
    loader = GleitzeitLoader(Settings.from_config(config),
                             limits=flowyard.ParseLimits.from_config(config))
    register("gleitzeit", loader, suffixes=GleitzeitLoader.suffixes)


@flowyard.hookimpl
def register_tools(register: Any, config: flowyard.Config) -> None:
    """Register ``gleitzeit.files`` (``[gleitzeit] root`` and ``max_file_bytes``)."""
    section = config.section("gleitzeit")
    max_bytes = section.get("max_file_bytes", 1024 * 1024)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise flowyard.ConfigError(
            f"[gleitzeit] max_file_bytes must be a positive integer, got {max_bytes!r}")
    root = section.get("root")
    if root is not None and not isinstance(root, str):
        raise flowyard.ConfigError(f"[gleitzeit] root must be a directory path, got {root!r}")
    register(FilesTool.name, FilesTool(root=root, max_file_bytes=max_bytes))
