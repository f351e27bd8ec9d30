"""Model routers for flowyard: ``cheapest``, ``fallback`` and ``ucb``.

Select one per call (``stack.llm.chat(..., model="auto", router="ucb")``), per step
(``model: auto`` plus ``requirements``) or for the whole stack (``[routing] router = "ucb"``).
See ``docs/plugins/routing.md``.
"""

from __future__ import annotations

__all__ = ["CheapestRouter", "FallbackRouter", "UCBRouter"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from flowyard_routing import routers

        return getattr(routers, name)
    raise AttributeError(f"module 'flowyard_routing' has no attribute {name!r}")
