"""The LLM gateway layer: every model call, its budgets, rate limits, breakers and models.

- :mod:`flowyard.llm.gateway` — :class:`LLMGateway` (routing, budgets, limits, cost, events)
- :mod:`flowyard.llm.budget` — budgets in US dollars with atomic reservations
- :mod:`flowyard.llm.ratelimit` — fair rpm/rph/rpd/tpm/concurrency limiters
- :mod:`flowyard.llm.circuit` — a circuit breaker per provider
- :mod:`flowyard.llm.modelregistry` — the models of all providers

This package sits above the plugin manager and below the engine and agent; it reaches the
rest of the stack only through :class:`flowyard.interfaces.Services`.
"""

from __future__ import annotations

from flowyard.llm.gateway import AUTO, ROUTER_STATE_NAMESPACE, LLMGateway, split_ref

__all__ = ["AUTO", "LLMGateway", "ROUTER_STATE_NAMESPACE", "split_ref"]
