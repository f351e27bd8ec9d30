"""Read-only accessors of the gateway's state for dashboards: looking at a provider's circuit
breaker never makes one (:meth:`BreakerSet.peek`, :meth:`BreakerSet.enabled`).
"""

from __future__ import annotations

from flowyard.clock import VirtualClock
from flowyard.llm.circuit import BreakerSet


def test_peek_returns_an_existing_breaker_and_never_makes_one() -> None:
    breakers = BreakerSet({"failure_threshold": 2}, clock=VirtualClock())
    assert breakers.peek("openai") is None
    assert breakers.snapshot() == {}  # peeking made nothing
    made = breakers.breaker("openai")
    assert made is not None and breakers.peek("openai") is made
    made.on_failure(False)
    made.on_failure(False)
    peeked = breakers.peek("openai")
    assert peeked is not None and peeked.state == "open"
    assert breakers.peek("anthropic") is None and set(breakers.snapshot()) == {"openai"}


def test_enabled_follows_the_defaults_and_the_per_provider_tables() -> None:
    breakers = BreakerSet({"enabled": True, "local": {"enabled": False}})
    assert breakers.enabled("openai") is True
    assert breakers.enabled("local") is False
    assert breakers.breaker("local") is None and breakers.peek("local") is None
    off = BreakerSet({"enabled": False, "openai": {"enabled": True}})
    assert off.enabled("anthropic") is False and off.enabled("openai") is True
    assert BreakerSet().enabled("anything") is True
    assert off.snapshot() == {}  # asking made nothing
