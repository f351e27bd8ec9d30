"""flowyard-openai: the provider for OpenAI and OpenAI-compatible servers.

``from flowyard_openai import OpenAIProvider``; see ``docs/plugins/openai.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OpenAIProvider"]


def __getattr__(name: str) -> Any:
    if name == "OpenAIProvider":
        from flowyard_openai.provider import OpenAIProvider

        return OpenAIProvider
    raise AttributeError(f"module 'flowyard_openai' has no attribute {name!r}")
