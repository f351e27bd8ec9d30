"""Hook implementations of flowyard-routing (cheap to import: routers are built lazily)."""

from __future__ import annotations

from typing import Any

from flowyard import Config, Register, hookimpl


@hookimpl
def register_routers(register: Register, config: Config) -> None:
    """``cheapest``, ``fallback`` and ``ucb``, configured from ``[routing.<name>]``."""

    def make(kind: str) -> Any:
        def factory() -> Any:
            from flowyard_routing import routers

            table = config.get(f"routing.{kind}", {}) or {}
            if kind == "cheapest":
                return routers.CheapestRouter.from_config(table)
            if kind == "fallback":
                return routers.FallbackRouter.from_config(table)
            return routers.UCBRouter.from_config(table)

        return factory

    for name in ("cheapest", "fallback", "ucb"):
        register(name, factory=make(name))
