"""Hook implementations of flowyard-anthropic (cheap to import: the provider loads lazily).

Configuration (``flowyard.toml``; every key optional)::

    [anthropic]
    api_key = "keystore:anthropic"     # the key store (docs/keys.md), "env:VAR" or the key;
                                       # default: $ANTHROPIC_API_KEY
    base_url = "https://api.anthropic.com"   # default: $ANTHROPIC_BASE_URL, else Anthropic's
    default_model = "claude-haiku-4-5" # opt in to be the stack's default model ...
    default_priority = 5               # ... with this priority

Other keys: ``headers`` (table, e.g. ``anthropic-beta``), ``timeout`` (seconds per phase),
``deadline`` (seconds per call; default ``timeout``), ``backend``
(auto/httpx/aiohttp), ``prices`` (``{model = {input=, output=}}``, US dollars per million
tokens), ``default_max_tokens``, ``max_connections``, ``enabled``.
"""

from __future__ import annotations

import os
from typing import Any

from flowyard import Config, ConfigError, Register, Services, hookimpl, resolve_secret

_PROVIDER_KEYS = {"api_key", "base_url", "headers", "timeout", "deadline", "backend", "prices",
                  "default_max_tokens", "max_connections"}
_REGISTRATION_KEYS = {"default_model", "default_priority", "enabled"}


@hookimpl
def register_providers(register: Register, config: Config, services: Services) -> None:
    """Register ``anthropic`` lazily (never the default model unless configured)."""
    section = config.section("anthropic")
    unknown = set(section) - _PROVIDER_KEYS - _REGISTRATION_KEYS
    if unknown:
        raise ConfigError(f"[anthropic]: unknown key(s) {', '.join(sorted(unknown))}; known: "
                          f"{', '.join(sorted(_PROVIDER_KEYS | _REGISTRATION_KEYS))}")
    if not section.get("enabled", True):
        return
    kwargs = {k: v for k, v in section.items() if k in _PROVIDER_KEYS}
    if config.get("limits.max_retry_after") is not None:
        kwargs["max_retry_after"] = config.get("limits.max_retry_after")
    if "base_url" not in kwargs and os.environ.get("ANTHROPIC_BASE_URL"):
        kwargs["base_url"] = os.environ["ANTHROPIC_BASE_URL"]
    meta: dict[str, Any] = {}
    if section.get("default_model"):
        model = str(section["default_model"])
        meta["default_model"] = model if model.startswith("anthropic/") else f"anthropic/{model}"
        meta["default_priority"] = int(section.get("default_priority", 5))

    events = services.events  # a key read from the key store is audited (keystore.used)

    def make() -> Any:
        from flowyard_anthropic.provider import AnthropicProvider

        # "keystore:<name>" / "env:<VAR>" keys are resolved on first use (docs/keys.md).
        options = dict(kwargs)
        if "api_key" in options:
            options["api_key"] = resolve_secret(options["api_key"], config=config,
                                                events=events, where="[anthropic] api_key")
        return AnthropicProvider("anthropic", **options)

    register("anthropic", factory=make, **meta)
