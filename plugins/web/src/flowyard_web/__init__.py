"""flowyard-web: the ``web.search`` and ``web.fetch`` tools.

``web.fetch`` downloads http(s) pages through an SSRF guard (every resolved address must be
public unless allow-listed; the connection is pinned to the checked address; each redirect
is checked again; byte and time caps) and extracts the main text with trafilatura.
``web.search`` queries a pluggable backend (ddgs by default). See ``docs/plugins/web.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names, imported on first access so that importing the plugin module stays cheap.
_EXPORTS = {
    "AddressPolicy": "flowyard_web.ssrf",
    "BlockedURLError": "flowyard_web.ssrf",
    "DDGSBackend": "flowyard_web.search",
    "SearchBackend": "flowyard_web.search",
    "SearchBackendError": "flowyard_web.search",
    "SearchResult": "flowyard_web.search",
    "SearxngBackend": "flowyard_web.search",
    "WebFetchTool": "flowyard_web.fetch",
    "WebSearchTool": "flowyard_web.search",
    "WebSettings": "flowyard_web.settings",
    "blocked_reason": "flowyard_web.ssrf",
    "extract_text": "flowyard_web.fetch",
    "load_backend": "flowyard_web.search",
    "parse_ip_literal": "flowyard_web.ssrf",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)
