"""flowyard-anthropic: the provider for Anthropic's Messages API.

``from flowyard_anthropic import AnthropicProvider``; see ``docs/plugins/anthropic.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AnthropicProvider"]


def __getattr__(name: str) -> Any:
    if name == "AnthropicProvider":
        from flowyard_anthropic.provider import AnthropicProvider

        return AnthropicProvider
    raise AttributeError(f"module 'flowyard_anthropic' has no attribute {name!r}")
