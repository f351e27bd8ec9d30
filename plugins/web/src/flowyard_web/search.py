"""``web.search`` and its pluggable search backends.

A backend is any object with a ``name`` and an async ``search`` method (see
:class:`SearchBackend`). Built in: ``ddgs`` (the ddgs metasearch library, DuckDuckGo and
others; the default) and ``searxng`` (a SearXNG instance's JSON API). Other distributions add
backends through the entry-point group ``flowyard_web.search_backends`` (name = a factory
``factory(**options) -> backend``); a config value ``"package.module:factory"`` names a factory
directly. ``[web] search_options`` are the factory's keyword arguments.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import anyio.to_thread
import attrs
import httpx
from flowyard import BaseTool, Config, ConfigError, ToolContext, ToolError

from flowyard_web.settings import WebSettings

__all__ = [
    "BACKEND_ENTRY_POINT_GROUP",
    "DDGSBackend",
    "SearchBackend",
    "SearchBackendError",
    "SearchResult",
    "SearxngBackend",
    "WebSearchTool",
    "load_backend",
]

BACKEND_ENTRY_POINT_GROUP = "flowyard_web.search_backends"
_SAFESEARCH = ("on", "moderate", "off")
_TIME_RANGES = ("day", "week", "month", "year")


@attrs.frozen
class SearchResult:
    """One search hit.

    Attributes:
        title: the page title; url: the page URL; snippet: the text shown under it.
        source: which backend (or engine behind it) returned it.
        published: publication date as the backend gives it (ISO 8601 when known), or None.
    """

    title: str
    url: str
    snippet: str = ""
    source: str = ""
    published: str | None = None


class SearchBackendError(Exception):
    """A backend failed. ``retriable``: trying again later may succeed (rate limits,
    timeouts, 5xx).
    """

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


@runtime_checkable
class SearchBackend(Protocol):
    """What ``web.search`` needs from a backend.

    Attributes:
        name: short name shown in results (``"ddgs"``).
    """

    name: str

    async def search(self, query: str, *, max_results: int, region: str | None = None,
                     safesearch: str = "moderate", time_range: str | None = None
                     ) -> Sequence[SearchResult]:
        """Return up to ``max_results`` hits, best first.

        Args:
            query: the search terms.
            max_results: 1..50.
            region: a region code such as ``"us-en"`` (backend default when None).
            safesearch: ``"on"``, ``"moderate"`` or ``"off"``.
            time_range: ``"day"``, ``"week"``, ``"month"``, ``"year"`` or None (any time).

        Raises:
            SearchBackendError: the search failed (``retriable`` set when worth retrying).
        """
        ...


class DDGSBackend:
    """Search through the ``ddgs`` metasearch library (https://pypi.org/project/ddgs/).

    Args:
        engines: ddgs ``backend`` value: ``"auto"`` (default) or comma-separated engine names
            (``"duckduckgo"``, ``"bing"``, ``"brave"``, ...).
        timeout: seconds per engine request (10).
        proxy: proxy URL for ddgs (None: its default, the ``DDGS_PROXY`` variable).
    """

    name = "ddgs"

    def __init__(self, *, engines: str = "auto", timeout: int = 10, proxy: str | None = None
                 ) -> None:
        self.engines = engines
        self.timeout = timeout
        self.proxy = proxy

    async def search(self, query: str, *, max_results: int, region: str | None = None,
                     safesearch: str = "moderate", time_range: str | None = None
                     ) -> list[SearchResult]:
        """Run ``DDGS().text`` in a worker thread (ddgs is synchronous); see
        :meth:`SearchBackend.search`.
        """
        from ddgs import DDGS
        from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

        def call() -> list[dict[str, Any]]:
            client = DDGS(proxy=self.proxy, timeout=self.timeout)
            return client.text(query, region=region or "us-en", safesearch=safesearch,
                               timelimit=time_range[0] if time_range else None,
                               max_results=max_results, backend=self.engines)

        try:
            rows = await anyio.to_thread.run_sync(call)
        except (RatelimitException, TimeoutException) as exc:
            raise SearchBackendError(f"{type(exc).__name__}: {exc}", retriable=True) from exc
        except DDGSException as exc:
            raise SearchBackendError(f"{type(exc).__name__}: {exc}",
                                     retriable="no results" not in str(exc).lower()) from exc
        return [SearchResult(title=str(row.get("title", "")), url=str(row.get("href", "")),
                             snippet=str(row.get("body", "")), source=self.name)
                for row in rows if row.get("href")]


class SearxngBackend:
    """Search through a SearXNG instance's JSON API (``GET {base_url}/search?format=json``;
    https://docs.searxng.org/dev/search_api.html, read 2026-11). The instance must enable the
    ``json`` output format.

    Args:
        base_url: the instance, e.g. ``"http://searx.internal:8080"`` (required).
        timeout: seconds per request (10).
        headers: extra request headers (e.g. an API gateway key).
    """

    name = "searxng"

    def __init__(self, *, base_url: str, timeout: float = 10.0,
                 headers: Mapping[str, str] | None = None) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"[web] search_options.base_url must be an http(s) URL, got "
                              f"{base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})

    async def search(self, query: str, *, max_results: int, region: str | None = None,
                     safesearch: str = "moderate", time_range: str | None = None
                     ) -> list[SearchResult]:
        """Query ``/search``; see :meth:`SearchBackend.search`."""
        params: dict[str, Any] = {"q": query, "format": "json",
                                  "safesearch": _SAFESEARCH[::-1].index(safesearch)}
        if region:
            params["language"] = region
        if time_range:
            params["time_range"] = time_range
        try:
            async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers,
                                         trust_env=False) as client:
                response = await client.get(f"{self.base_url}/search", params=params)
        except httpx.HTTPError as exc:
            raise SearchBackendError(f"SearXNG request failed: {type(exc).__name__}: {exc}",
                                     retriable=True) from exc
        if response.status_code != 200:
            raise SearchBackendError(f"SearXNG answered HTTP {response.status_code}",
                                     retriable=response.status_code in (429, 500, 502, 503,
                                                                        504))
        try:
            rows = response.json().get("results", [])
        except ValueError as exc:
            raise SearchBackendError(f"SearXNG returned invalid JSON: {exc}") from exc
        results = []
        for row in rows[:max_results]:
            if not isinstance(row, Mapping) or not row.get("url"):
                continue
            engines = row.get("engines") or [row.get("engine", "")]
            results.append(SearchResult(
                title=str(row.get("title", "")), url=str(row["url"]),
                snippet=str(row.get("content", "") or ""),
                source=f"searxng:{','.join(str(e) for e in engines if e)}",
                published=row.get("publishedDate")))
        return results


_BUILTIN: dict[str, Callable[..., Any]] = {"ddgs": DDGSBackend, "searxng": SearxngBackend}


def load_backend(reference: str, options: Mapping[str, Any]) -> SearchBackend:
    """Build the backend named by ``reference`` with keyword ``options``.

    ``reference`` is a built-in name, an entry-point name of the group
    ``flowyard_web.search_backends``, or ``"package.module:factory"``.

    Raises:
        ConfigError: unknown name, import failure, bad options, or an object without
            ``name`` and ``search``.
    """
    if reference in _BUILTIN:
        factory = _BUILTIN[reference]
    elif ":" in reference:
        module_name, _, attr = reference.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"[web] search_backend {reference!r} cannot be imported: "
                              f"{exc}") from exc
    else:
        found = [ep for ep in entry_points(group=BACKEND_ENTRY_POINT_GROUP)
                 if ep.name == reference]
        if not found:
            names = sorted({*_BUILTIN, *(ep.name for ep in
                                         entry_points(group=BACKEND_ENTRY_POINT_GROUP))})
            raise ConfigError(f"[web] unknown search_backend {reference!r}; available: "
                              f"{names}, or 'package.module:factory'")
        try:
            factory = found[0].load()
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"[web] search backend {reference!r} failed to load: "
                              f"{exc}") from exc
    try:
        backend = factory(**dict(options))
    except TypeError as exc:
        raise ConfigError(f"[web] search_options do not fit backend {reference!r}: "
                          f"{exc}") from exc
    if not isinstance(backend, SearchBackend):
        raise ConfigError(f"[web] search_backend {reference!r} built {backend!r}, which has "
                          f"no name and async search()")
    return backend


class WebSearchTool(BaseTool):
    """``web.search``: search the web through the configured backend.

    Arguments: ``query``; ``max_results`` (1..50, default ``[web] max_results``); ``region``;
    ``safesearch`` (``on``/``moderate``/``off``); ``time_range`` (``day``/``week``/``month``/
    ``year``).

    Returns:
        ``{"query", "backend", "results": [{"title", "url", "snippet", "source",
        "published"}, ...]}``.

    Raises:
        ToolError: the backend failed (``retriable`` from the backend).
        ConfigError: when first used, the configured backend cannot be built.
    """

    name = "web.search"
    description = ("Search the web and return result titles, URLs and snippets. Use web.fetch "
                   "to read a result's page.")
    parameters = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": 1000,
                      "description": "Search terms."},
            "max_results": {"type": "integer", "minimum": 1, "maximum": 50,
                            "description": "How many results to return."},
            "region": {"type": "string", "pattern": "^[A-Za-z]{2}(-[A-Za-z]{2})?$",
                       "description": "Region/language code such as us-en or de-de."},
            "safesearch": {"enum": list(_SAFESEARCH), "default": "moderate"},
            "time_range": {"enum": list(_TIME_RANGES),
                           "description": "Only results from the last day/week/month/year."},
        },
        "required": ["query"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ("network",)

    def __init__(self, settings: WebSettings | None = None, *,
                 backend: SearchBackend | None = None) -> None:
        """Args:
        settings: the ``[web]`` settings (defaults when None).
        backend: a backend object; when None, ``settings.search_backend`` is built on
            first use.
        """
        self.settings = settings or WebSettings()
        self._backend = backend

    @classmethod
    def from_config(cls, config: Config) -> WebSearchTool:
        """Build the tool from the ``[web]`` section (the backend is built on first use).

        Raises:
            ConfigError: the section is invalid.
        """
        return cls(WebSettings.from_section(config.section("web")))

    @property
    def backend(self) -> SearchBackend:
        """The backend in use (built from the settings on first access)."""
        if self._backend is None:
            self._backend = load_backend(self.settings.search_backend,
                                         self.settings.search_options)
        return self._backend

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Search; see the class docstring for arguments, result and errors."""
        backend = self.backend
        max_results = arguments.get("max_results", self.settings.max_results)
        try:
            hits = await backend.search(arguments["query"], max_results=max_results,
                                        region=arguments.get("region"),
                                        safesearch=arguments.get("safesearch", "moderate"),
                                        time_range=arguments.get("time_range"))
        except SearchBackendError as exc:
            raise ToolError(f"web.search: backend {backend.name!r} failed: {exc}",
                            tool=self.name, retriable=exc.retriable) from exc
        results = []
        for hit in list(hits)[:max_results]:
            if not isinstance(hit, SearchResult):
                raise ToolError(f"web.search: backend {backend.name!r} returned {hit!r}, not a "
                                f"SearchResult", tool=self.name)
            results.append(attrs.asdict(hit))
        return {"query": arguments["query"], "backend": backend.name, "results": results}
