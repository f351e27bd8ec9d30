"""flowyard-ollama: the provider for Ollama's native API.

``from flowyard_ollama import OllamaProvider``; see ``docs/plugins/ollama.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OllamaProvider"]


def __getattr__(name: str) -> Any:
    if name == "OllamaProvider":
        from flowyard_ollama.provider import OllamaProvider

        return OllamaProvider
    raise AttributeError(f"module 'flowyard_ollama' has no attribute {name!r}")
