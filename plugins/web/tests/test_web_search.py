"""web.search: backends chosen by configuration, the SearXNG backend against a local fake
SearXNG server, a backend loaded from a ``module:factory`` reference, the ddgs adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flowyard_web.plugin
import pytest
from flowyard.errors import ConfigError, ToolError
from flowyard.stack import Stack
from flowyard.testing import ToolContract
from flowyard_web import (
    DDGSBackend,
    SearchResult,
    SearxngBackend,
    WebSearchTool,
    WebSettings,
    load_backend,
)

pytestmark = pytest.mark.anyio


class TestWebSearchContract(ToolContract):
    @pytest.fixture
    def tool(self, server: Any) -> Any:
        return WebSearchTool(WebSettings(), backend=SearxngBackend(base_url=server.url("")))

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"query": "tidal energy", "max_results": 3}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"query": "", "max_results": 500}


async def test_searxng_backend_maps_results_and_parameters(server: Any, tool_context: Any
                                                           ) -> None:
    tool = WebSearchTool(WebSettings(), backend=SearxngBackend(base_url=server.url("/")))
    out = await tool.invoke({"query": "harbour turbines", "max_results": 4, "region": "de-de",
                             "safesearch": "off", "time_range": "week"}, tool_context)
    assert out["backend"] == "searxng" and out["query"] == "harbour turbines"
    assert [r["title"] for r in out["results"]] == [
        "Result 1 for harbour turbines", "Result 2 for harbour turbines",
        "Result 3 for harbour turbines"], "the entry without a URL is dropped"
    first = out["results"][0]
    assert first == {"title": "Result 1 for harbour turbines", "url": "https://example.org/1",
                     "snippet": "Snippet 1 about harbour turbines",
                     "source": "searxng:duckduckgo,brave", "published": None}
    request = [h for h in server.hits if h["path"].startswith("/search")][-1]["path"]
    assert "safesearch=0" in request and "time_range=week" in request
    assert "language=de-de" in request and "format=json" in request


async def test_backend_failure_is_a_retriable_tool_error(server: Any, tool_context: Any) -> None:
    tool = WebSearchTool(WebSettings(), backend=SearxngBackend(base_url=server.url("")))
    with pytest.raises(ToolError, match=r"searxng.*HTTP 503") as info:
        await tool.invoke({"query": "fail"}, tool_context)
    assert info.value.retriable is True


async def test_backend_named_in_config_through_the_plugin(server: Any, tool_context: Any) -> None:
    stack = Stack(plugins=[("web", flowyard_web.plugin)], config={"web": {
        "search_backend": "searxng", "search_options": {"base_url": server.url("")},
        "max_results": 2}})
    tool = stack.tools.get("web.search")
    out = await tool.invoke({"query": "configured"}, tool_context)
    assert out["backend"] == "searxng" and len(out["results"]) == 2
    assert stack.tools.get("web.fetch").name == "web.fetch"


FAKE_BACKEND = '''
from flowyard_web import SearchResult

class LocalIndex:
    """A search backend over an in-memory list of pages."""

    name = "local-index"

    def __init__(self, pages):
        self.pages = pages

    async def search(self, query, *, max_results, region=None, safesearch="moderate",
                     time_range=None):
        words = query.lower().split()
        hits = [p for p in self.pages if all(w in p["text"].lower() for w in words)]
        return [SearchResult(title=p["title"], url=p["url"], snippet=p["text"][:40],
                             source=self.name) for p in hits[:max_results]]


def make(pages):
    return LocalIndex(pages)
'''


async def test_backend_from_a_module_factory_reference(tmp_path: Path, tool_context: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fy_local_index_backend.py").write_text(FAKE_BACKEND)
    monkeypatch.syspath_prepend(str(tmp_path))
    pages = [
        {"title": "Tides", "url": "https://a.example/tides", "text": "Tides rise twice a day"},
        {"title": "Boats", "url": "https://a.example/boats", "text": "Boats wait for tides"},
        {"title": "Fish", "url": "https://a.example/fish", "text": "Fish markets open early"},
    ]
    settings = WebSettings.from_section({"search_backend": "fy_local_index_backend:make",
                                         "search_options": {"pages": pages}})
    out = await WebSearchTool(settings).invoke({"query": "tides"}, tool_context)
    assert out["backend"] == "local-index"
    assert [r["url"] for r in out["results"]] == ["https://a.example/tides",
                                                  "https://a.example/boats"]


def test_unknown_or_broken_backends_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown search_backend 'nope'.*ddgs.*searxng"):
        load_backend("nope", {})
    with pytest.raises(ConfigError, match=r"cannot be imported"):
        load_backend("no_such_module_xyz:factory", {})
    with pytest.raises(ConfigError, match=r"do not fit backend 'searxng'"):
        load_backend("searxng", {"bogus": 1})
    with pytest.raises(ConfigError, match=r"base_url"):
        load_backend("searxng", {"base_url": "ftp://x"})
    with pytest.raises(ConfigError, match=r"no name and async search"):
        load_backend("builtins:dict", {})


async def test_a_backend_returning_the_wrong_type_is_reported(tool_context: Any) -> None:
    class Sloppy:
        name = "sloppy"

        async def search(self, query: str, **kwargs: Any) -> list[Any]:
            return [{"title": "not a SearchResult"}]

    with pytest.raises(ToolError, match=r"not a SearchResult"):
        await WebSearchTool(WebSettings(), backend=Sloppy()).invoke({"query": "x"},
                                                                    tool_context)


async def test_ddgs_adapter_maps_rows_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    # DuckDuckGo is a remote service (no internet here): its client call is replaced.
    import ddgs.ddgs  # the real class behind ddgs' lazy proxy

    seen: dict[str, Any] = {}

    def fake_text(self: Any, query: str, **kwargs: Any) -> list[dict[str, Any]]:
        seen.update(kwargs, query=query)
        return [{"title": "T1", "href": "https://one.example/", "body": "B1"},
                {"title": "no link", "body": "dropped"},
                {"title": "T2", "href": "https://two.example/", "body": "B2"}]

    monkeypatch.setattr(ddgs.ddgs.DDGS, "text", fake_text)
    backend = DDGSBackend(engines="duckduckgo")
    hits = await backend.search("tides", max_results=5, region="uk-en", safesearch="on",
                                time_range="month")
    assert hits == [SearchResult("T1", "https://one.example/", "B1", "ddgs"),
                    SearchResult("T2", "https://two.example/", "B2", "ddgs")]
    assert seen == {"query": "tides", "region": "uk-en", "safesearch": "on", "timelimit": "m",
                    "max_results": 5, "backend": "duckduckgo"}


async def test_ddgs_rate_limit_is_retriable(monkeypatch: pytest.MonkeyPatch, tool_context: Any
                                            ) -> None:
    import ddgs.ddgs
    from ddgs.exceptions import RatelimitException

    def limited(self: Any, query: str, **kwargs: Any) -> list[dict[str, Any]]:
        raise RatelimitException("202 Ratelimit")

    monkeypatch.setattr(ddgs.ddgs.DDGS, "text", limited)
    tool = WebSearchTool(WebSettings())
    assert isinstance(tool.backend, DDGSBackend), "ddgs is the default backend"
    with pytest.raises(ToolError, match=r"ddgs.*Ratelimit") as info:
        await tool.invoke({"query": "tides"}, tool_context)
    assert info.value.retriable is True


def test_installed_entry_point_registers_both_tools() -> None:
    stack = Stack(discover=True, config={"plugins": {"enabled": ["web"]},
                                         "web": {"allow_networks": ["127.0.0.1/32"]}})
    fetch = stack.tools.get("web.fetch")
    assert {"web.search", "web.fetch"} <= set(stack.tools.names())
    assert fetch.idempotent is True and list(fetch.side_effects) == ["network"]
    assert str(fetch.settings.policy.allow_networks[0]) == "127.0.0.1/32"
