"""flowyard-safepath: file access confined to a root directory, safe against traversal and
symlink races (Linux/POSIX only).

A library distribution, not a plugin (no entry point): the tool plugins that touch files
(``flowyard-filesystem``, ``flowyard-report``) depend on it. :class:`SafeRoot` does the work;
:func:`safe_root_from_config` builds one from a ``[<section>]`` of ``flowyard.toml``. How a
path is checked, and the known limits, are described in :mod:`flowyard_safepath._root`.

Errors: :class:`UnsafePathError` (a :class:`flowyard.errors.ToolInputError`) for refused
paths, :class:`QuotaExceededError` (a :class:`flowyard.errors.ToolError`) for quotas,
:class:`PathNotFoundError` for missing paths, and :class:`flowyard.errors.ToolError` for every
other failure.
"""

from __future__ import annotations

from flowyard_safepath._root import (
    EntryInfo,
    PathNotFoundError,
    QuotaExceededError,
    SafeRoot,
    UnsafePathError,
    decode_content,
    safe_root_from_config,
    workspace_root,
)

__version__ = "0.1.0"

__all__ = [
    "EntryInfo",
    "PathNotFoundError",
    "QuotaExceededError",
    "SafeRoot",
    "UnsafePathError",
    "__version__",
    "decode_content",
    "safe_root_from_config",
    "workspace_root",
]
