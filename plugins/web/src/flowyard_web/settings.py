"""The ``[web]`` configuration section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from flowyard import ConfigError

from flowyard_web.ssrf import AddressPolicy

__all__ = ["DEFAULT_USER_AGENT", "WebSettings"]

DEFAULT_USER_AGENT = "flowyard-web/0.1"


def _number(section: Mapping[str, Any], key: str, default: float, *, integer: bool) -> Any:
    value = section.get(key, default)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise ConfigError(f"[web] {key} must be a positive {'integer' if integer else 'number'}"
                          f", got {value!r}")
    return value


@attrs.frozen
class WebSettings:
    """The ``[web]`` section, validated.

    Args:
        allow_networks: CIDR networks ``web.fetch`` may reach although not public (none).
        timeout: default whole-fetch time cap in seconds, redirects included (20);
            max_timeout: the largest a call may ask for (120).
        max_bytes: default cap on a response body after decompression, bytes (5_000_000);
            max_bytes_limit: the largest a call may ask for (50_000_000).
        max_redirects: redirect hops followed (5).
        user_agent: the User-Agent header.
        search_backend: the ``web.search`` backend: a built-in name (``"ddgs"``, ``"searxng"``),
            a name from the entry-point group ``flowyard_web.search_backends``, or a
            ``"package.module:factory"`` reference (default ``"ddgs"``).
        search_options: keyword options for the backend factory (a table).
        max_results: default number of search results (10); at most 50.

    Raises:
        ConfigError: a value has the wrong type or range (the message names the key).
    """

    policy: AddressPolicy = attrs.field(factory=AddressPolicy)
    timeout: float = 20.0
    max_timeout: float = 120.0
    max_bytes: int = 5_000_000
    max_bytes_limit: int = 50_000_000
    max_redirects: int = 5
    user_agent: str = DEFAULT_USER_AGENT
    search_backend: str = "ddgs"
    search_options: Mapping[str, Any] = attrs.field(factory=dict)
    max_results: int = 10

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> WebSettings:
        """Build the settings from the ``[web]`` table.

        Raises:
            ConfigError: unknown key or invalid value.
        """
        known = {"allow_networks", "timeout", "max_timeout", "max_bytes", "max_bytes_limit",
                 "max_redirects", "user_agent", "search_backend", "search_options",
                 "max_results"}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"[web] unknown key(s) {unknown}; known: {sorted(known)}")
        networks = section.get("allow_networks", [])
        if not isinstance(networks, list) or not all(isinstance(n, str) for n in networks):
            raise ConfigError(f"[web] allow_networks must be a list of CIDR strings, got "
                              f"{networks!r}")
        try:
            policy = AddressPolicy.from_strings(networks)
        except ValueError as exc:
            raise ConfigError(f"[web] allow_networks: {exc}") from None
        max_redirects = section.get("max_redirects", 5)
        if isinstance(max_redirects, bool) or not isinstance(max_redirects, int) or \
                max_redirects < 0:
            raise ConfigError(f"[web] max_redirects must be an integer >= 0, got "
                              f"{max_redirects!r}")
        for key in ("user_agent", "search_backend"):
            if key in section and not (isinstance(section[key], str) and section[key]):
                raise ConfigError(f"[web] {key} must be a non-empty string")
        options = section.get("search_options", {})
        if not isinstance(options, Mapping):
            raise ConfigError("[web] search_options must be a table")
        max_results = _number(section, "max_results", 10, integer=True)
        if max_results > 50:
            raise ConfigError("[web] max_results must be at most 50")
        settings = cls(
            policy=policy,
            timeout=float(_number(section, "timeout", 20.0, integer=False)),
            max_timeout=float(_number(section, "max_timeout", 120.0, integer=False)),
            max_bytes=_number(section, "max_bytes", 5_000_000, integer=True),
            max_bytes_limit=_number(section, "max_bytes_limit", 50_000_000, integer=True),
            max_redirects=max_redirects,
            user_agent=section.get("user_agent", DEFAULT_USER_AGENT),
            search_backend=section.get("search_backend", "ddgs"),
            search_options=dict(options),
            max_results=max_results,
        )
        if settings.timeout > settings.max_timeout:
            raise ConfigError("[web] timeout exceeds max_timeout")
        if settings.max_bytes > settings.max_bytes_limit:
            raise ConfigError("[web] max_bytes exceeds max_bytes_limit")
        return settings
