"""Hook implementations of flowyard-openai (cheap to import: the provider loads lazily).

Configuration (``flowyard.toml``; every key optional)::

    [openai]
    api_key = "keystore:openai"   # from the key store (docs/keys.md); or "env:VAR", or the key;
                                  # default: $OPENAI_API_KEY for OpenAI's base_url only
    base_url = "https://api.openai.com/v1"   # default: $OPENAI_BASE_URL, else OpenAI's
    default_model = "gpt-4o-mini" # opt in to be the stack's default model ...
    default_priority = 5          # ... with this priority (the local model is the default)

    [openai.endpoints.vllm]       # another OpenAI-compatible server, provider name "vllm"
    base_url = "http://127.0.0.1:8000/v1"
    api_key_env = "VLLM_API_KEY"  # or api_key = "..."; none sent when neither is set
    free = true                   # a local server: cost 0 instead of unknown

Other keys of a section: ``organization``, ``project``, ``headers`` (table), ``timeout``
(seconds per phase), ``deadline`` (seconds per call; default ``timeout``), ``backend`` (auto/httpx/aiohttp), ``prices`` (``{model = {input=, output=}}`` in US
dollars per million tokens), ``price_table`` (bool), ``structured_output`` (json_schema or
json_object), ``max_tokens_field``, ``stream_usage`` (bool), ``max_connections``, ``enabled``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flowyard import Config, ConfigError, Register, Services, hookimpl, resolve_secret

_PROVIDER_KEYS = {
    "api_key", "base_url", "organization", "project", "headers", "timeout", "deadline",
    "backend",
    "prices", "price_table", "free", "structured_output", "max_tokens_field", "stream_usage",
    "max_connections",
}
_REGISTRATION_KEYS = {"api_key_env", "default_model", "default_priority", "enabled"}


def provider_options(name: str, section: Mapping[str, Any], *, where: str
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a configuration table into ``(provider keyword arguments, registry metadata)``.

    Raises:
        ConfigError: an unknown key, or ``api_key_env`` naming an unset variable.
    """
    unknown = set(section) - _PROVIDER_KEYS - _REGISTRATION_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: "
                          f"{', '.join(sorted(_PROVIDER_KEYS | _REGISTRATION_KEYS))}")
    kwargs = {k: v for k, v in section.items() if k in _PROVIDER_KEYS}
    env_name = section.get("api_key_env")
    if env_name and "api_key" not in kwargs:
        value = os.environ.get(str(env_name))
        if value:
            kwargs["api_key"] = value
    meta: dict[str, Any] = {}
    if section.get("default_model"):
        model = str(section["default_model"])
        meta["default_model"] = model if model.startswith(f"{name}/") else f"{name}/{model}"
        meta["default_priority"] = int(section.get("default_priority", 5))
    return kwargs, meta


def _factory(name: str, kwargs: dict[str, Any], config: Config, where: str,
             events: Any = None) -> Any:
    def make() -> Any:
        from flowyard_openai.provider import OpenAIProvider

        # A "keystore:<name>" or "env:<VAR>" api_key is resolved when the provider is first
        # used, so the key store is opened (and its passphrase asked for) only then.
        options = dict(kwargs)
        if "api_key" in options:
            options["api_key"] = resolve_secret(options["api_key"], config=config,
                                                events=events, where=f"{where} api_key")
        return OpenAIProvider(name, **options)

    return make


@hookimpl
def register_providers(register: Register, config: Config, services: Services) -> None:
    """Register ``openai`` and one provider per ``[openai.endpoints.<name>]`` table, lazily."""
    section = config.section("openai")
    events = services.events  # a key read from the key store is audited (keystore.used)
    max_retry_after = config.get("limits.max_retry_after")
    endpoints = section.pop("endpoints", {}) or {}
    if not isinstance(endpoints, Mapping):
        raise ConfigError("[openai] endpoints must be a table of tables")
    if "base_url" not in section and os.environ.get("OPENAI_BASE_URL"):
        section["base_url"] = os.environ["OPENAI_BASE_URL"]
    if section.get("enabled", True):
        kwargs, meta = provider_options("openai", section, where="[openai]")
        if max_retry_after is not None:
            kwargs["max_retry_after"] = max_retry_after
        register("openai", factory=_factory("openai", kwargs, config, "[openai]", events), **meta)
    for name, table in endpoints.items():
        where = f"[openai.endpoints.{name}]"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a table")
        if "/" in name:
            raise ConfigError(f"{where}: a provider name cannot contain '/'")
        if not table.get("base_url"):
            raise ConfigError(f"{where}: base_url is required")
        if not table.get("enabled", True):
            continue
        kwargs, meta = provider_options(name, table, where=where)
        if max_retry_after is not None:
            kwargs["max_retry_after"] = max_retry_after
        register(name, factory=_factory(name, kwargs, config, where, events), **meta)
