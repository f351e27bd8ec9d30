"""Hook implementations of flowyard-ollama (cheap to import: the provider loads lazily).

Configuration (``flowyard.toml``; every key optional)::

    [ollama]
    base_url = "http://127.0.0.1:11434"   # default: $OLLAMA_HOST, else this
    keep_alive = "10m"
    options = { num_ctx = 8192 }
    default_model = "llama3.2"            # opt in to be the stack's default model ...
    default_priority = 5                  # ... with this priority

Other keys: ``api_key`` (default ``$OLLAMA_API_KEY``; for ollama.com; ``"keystore:<name>"``
reads the key store, docs/keys.md), ``headers``,
``timeout`` (seconds per phase), ``deadline`` (seconds per call; default ``timeout``),
``free`` (bool: local models cost 0; default true unless the base URL is ollama.com), ``prices`` (``{model = {input=, output=}}``, US dollars per million tokens),
``backend``, ``max_connections``, ``enabled``.
"""

from __future__ import annotations

from typing import Any

from flowyard import Config, ConfigError, Register, Services, hookimpl, resolve_secret

_PROVIDER_KEYS = {"base_url", "api_key", "headers", "timeout", "deadline", "keep_alive",
                  "options", "free", "prices", "backend", "max_connections"}
_REGISTRATION_KEYS = {"default_model", "default_priority", "enabled"}


@hookimpl
def register_providers(register: Register, config: Config, services: Services) -> None:
    """Register ``ollama`` lazily (never the default model unless configured)."""
    section = config.section("ollama")
    unknown = set(section) - _PROVIDER_KEYS - _REGISTRATION_KEYS
    if unknown:
        raise ConfigError(f"[ollama]: unknown key(s) {', '.join(sorted(unknown))}; known: "
                          f"{', '.join(sorted(_PROVIDER_KEYS | _REGISTRATION_KEYS))}")
    if not section.get("enabled", True):
        return
    kwargs = {k: v for k, v in section.items() if k in _PROVIDER_KEYS}
    if config.get("limits.max_retry_after") is not None:
        kwargs["max_retry_after"] = config.get("limits.max_retry_after")
    meta: dict[str, Any] = {}
    if section.get("default_model"):
        model = str(section["default_model"])
        meta["default_model"] = model if model.startswith("ollama/") else f"ollama/{model}"
        meta["default_priority"] = int(section.get("default_priority", 5))

    events = services.events  # a key read from the key store is audited (keystore.used)

    def make() -> Any:
        from flowyard_ollama.provider import OllamaProvider

        # "keystore:<name>" / "env:<VAR>" keys are resolved on first use (docs/keys.md).
        options = dict(kwargs)
        if "api_key" in options:
            options["api_key"] = resolve_secret(options["api_key"], config=config,
                                                events=events, where="[ollama] api_key")
        return OllamaProvider("ollama", **options)

    register("ollama", factory=make, **meta)
