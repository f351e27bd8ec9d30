"""Hook implementations of flowyard-web (plugin name ``web``); cheap to import."""

from __future__ import annotations

from typing import Any

from flowyard import Config, Register, hookimpl


@hookimpl
def register_tools(register: Register, config: Config) -> None:
    """Register ``web.search`` and ``web.fetch``, built lazily from the ``[web]`` section."""

    def search() -> Any:
        from flowyard_web.search import WebSearchTool

        return WebSearchTool.from_config(config)

    def fetch() -> Any:
        from flowyard_web.fetch import WebFetchTool

        return WebFetchTool.from_config(config)

    register("web.search", factory=search)
    register("web.fetch", factory=fetch)
