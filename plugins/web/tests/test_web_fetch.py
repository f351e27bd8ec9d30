"""web.fetch against a real HTTP(S) server on 127.0.0.1: SSRF cases, redirects, caps,
extraction of real HTML pages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from flowyard.errors import ConfigError, ToolError, ToolInputError
from flowyard.testing import ToolContract
from flowyard_web import (
    AddressPolicy,
    BlockedURLError,
    WebFetchTool,
    WebSettings,
    parse_ip_literal,
)

pytestmark = pytest.mark.anyio

LOCAL = ["127.0.0.0/8", "::1/128"]


def fetcher(allow: Sequence[str] = (), **kwargs: Any) -> WebFetchTool:
    settings = WebSettings(policy=AddressPolicy.from_strings(allow), **kwargs)
    return WebFetchTool(settings)


class TestWebFetchContract(ToolContract):
    @pytest.fixture
    def tool(self) -> Any:
        return fetcher(LOCAL)

    @pytest.fixture
    def valid_arguments(self, server: Any) -> dict[str, Any]:
        return {"url": server.url("/article"), "format": "text"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"url": "http://example.org/", "format": "pdf"}


# ----------------------------------------------------------------------------- blocked by default

@pytest.mark.parametrize("host", [
    "127.0.0.1",        # loopback
    "2130706433",       # decimal form of 127.0.0.1
    "0x7f000001",       # hex form
    "127.1",            # short form
    "0x7f.1",           # mixed short hex form
    "[::1]",            # IPv6 loopback
    "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
    "localhost",        # a name that resolves to 127.0.0.1
    "LOCALHOST.",       # the same, fully qualified and upper case
])
async def test_loopback_in_every_spelling_is_blocked(server: Any, tool_context: Any,
                                                     host: str) -> None:
    before = len(server.hits)
    with pytest.raises(BlockedURLError, match=r"loopback"):
        await fetcher().invoke({"url": server.url("/article", host=host)}, tool_context)
    assert len(server.hits) == before, "no request reached the server"


@pytest.mark.parametrize(("url", "reason"), [
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://10.1.2.3/", "private"),
    ("http://192.168.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0:8080/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://100.64.0.1/", "not globally routable"),
    ("http://[::ffff:10.0.0.1]/", "private"),
    ("http://[64:ff9b::7f00:1]/", "loopback"),
    ("http://[2002:7f00:1::]/", "loopback"),
])
async def test_non_public_addresses_are_blocked(tool_context: Any, url: str, reason: str) -> None:
    with pytest.raises(BlockedURLError, match=reason):
        await fetcher().invoke({"url": url}, tool_context)


async def test_octal_ipv4_is_refused(tool_context: Any) -> None:
    # httpx rejects the octal spelling outright; the guard decodes it too, should one pass.
    with pytest.raises((BlockedURLError, ToolInputError)):
        await fetcher().invoke({"url": "http://0177.0.0.1/"}, tool_context)
    assert str(parse_ip_literal("0177.0.0.1")) == "127.0.0.1"
    assert str(parse_ip_literal("2130706433")) == "127.0.0.1"
    assert str(parse_ip_literal("0x7f.0.0.1")) == "127.0.0.1"
    assert parse_ip_literal("example.org") is None
    assert parse_ip_literal("deadbeef") is None


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x",
                                 "gopher://127.0.0.1:70/", "javascript:alert(1)",
                                 "/relative/path"])
async def test_only_http_and_https(tool_context: Any, url: str) -> None:
    with pytest.raises((BlockedURLError, ToolInputError)):
        await fetcher(LOCAL).invoke({"url": url}, tool_context)


async def test_credentials_in_urls_are_refused(server: Any, tool_context: Any) -> None:
    with pytest.raises(BlockedURLError, match=r"credentials"):
        await fetcher(LOCAL).invoke(
            {"url": f"http://user:pw@127.0.0.1:{server.port}/article"}, tool_context)


# ----------------------------------------------------------------------------- allow-listed

async def test_allow_listed_loopback_fetches_and_extracts_the_article(server: Any,
                                                                      tool_context: Any) -> None:
    result = await fetcher(["127.0.0.1/32"]).invoke({"url": server.url("/article")},
                                                    tool_context)
    assert result["status"] == 200 and result["address"] == "127.0.0.1"
    assert result["title"] == "Tidal Energy in Small Harbours"
    assert result["extraction"] == "main" and result["format"] == "markdown"
    content = result["content"]
    assert "compact turbines" in content and "## Costs and maintenance" in content
    assert "[harbour authority report](" in content
    assert "Porthmoor" in content
    for boilerplate in ("Buy our boat paint", "All rights reserved", "Contact"):
        assert boilerplate not in content


async def test_text_and_raw_html_formats(server: Any, tool_context: Any) -> None:
    tool = fetcher(LOCAL)
    text = await tool.invoke({"url": server.url("/article"), "format": "text"}, tool_context)
    assert "compact turbines" in text["content"] and "](" not in text["content"]
    assert "##" not in text["content"]
    raw = await tool.invoke({"url": server.url("/article"), "format": "html"}, tool_context)
    assert raw["content"].startswith("<!DOCTYPE html>") and "<nav>" in raw["content"]


async def test_declared_charset_is_honoured(server: Any, tool_context: Any) -> None:
    result = await fetcher(LOCAL).invoke({"url": server.url("/latin1")}, tool_context)
    assert result["title"] == "Café"
    assert "pêche" in result["content"] and "marée" in result["content"]


async def test_plain_text_and_json_are_returned_as_is(server: Any, tool_context: Any) -> None:
    tool = fetcher(LOCAL)
    plain = await tool.invoke({"url": server.url("/plain")}, tool_context)
    assert plain["content"] == "just some plain text\n" and plain["extraction"] == "none"
    data = await tool.invoke({"url": server.url("/json")}, tool_context)
    assert json.loads(data["content"]) == {"ok": True}


async def test_pdf_text_is_extracted(server: Any, tool_context: Any) -> None:
    tool = fetcher(LOCAL)
    result = await tool.invoke({"url": server.url("/report.pdf")}, tool_context)
    assert result["extraction"] == "pdf" and result["title"] == "Harbour Tides"
    assert "Tidal energy report" in result["content"]
    assert "Turbines in harbour channels" in result["content"]
    with pytest.raises(ToolError, match=r"larger than max_bytes"):
        await tool.invoke({"url": server.url("/report.pdf"), "max_bytes": 100}, tool_context)


async def test_binary_content_is_refused(server: Any, tool_context: Any) -> None:
    with pytest.raises(ToolError, match=r"application/octet-stream"):
        await fetcher(LOCAL).invoke({"url": server.url("/binary")}, tool_context)


async def test_localhost_name_allowed_when_its_address_is(server: Any, tool_context: Any
                                                          ) -> None:
    result = await fetcher(LOCAL).invoke({"url": server.url("/echo-host", host="localhost")},
                                         tool_context)
    assert json.loads(result["content"])["host"] == f"localhost:{server.port}"


async def test_allow_list_of_one_address_does_not_open_others(server: Any, tool_context: Any
                                                              ) -> None:
    with pytest.raises(BlockedURLError, match=r"private"):
        await fetcher(["127.0.0.1/32"]).invoke({"url": "http://10.0.0.1/"}, tool_context)


# ----------------------------------------------------------------------------- redirects

async def test_redirect_to_the_metadata_address_is_blocked(server: Any, tool_context: Any
                                                           ) -> None:
    target = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    with pytest.raises(BlockedURLError, match=r"169.254.169.254.*cloud metadata"):
        await fetcher(LOCAL).invoke({"url": server.url(f"/redirect?to={target}")},
                                    tool_context)


@pytest.mark.parametrize("target", ["http://2130706433:{port}/article",
                                    "http://[::1]:{port}/article",
                                    "http://10.0.0.5/article"])
async def test_redirect_hops_are_checked_again(server: Any, tool_context: Any,
                                               target: str) -> None:
    # 127.0.0.1 is allowed, so the first hop passes; the second must be judged on its own.
    tool = fetcher(["127.0.0.1/32"])
    location = target.format(port=server.port)
    if "2130706433" in location:
        # decimal 127.0.0.1 is the allowed address: followed
        result = await tool.invoke({"url": server.url(f"/redirect?to={location}")},
                                   tool_context)
        assert result["final_url"] == location and result["status"] == 200
        assert result["redirects"] == [server.url(f"/redirect?to={location}")]
    else:
        with pytest.raises(BlockedURLError):
            await tool.invoke({"url": server.url(f"/redirect?to={location}")}, tool_context)


async def test_redirect_to_another_scheme_is_blocked(server: Any, tool_context: Any) -> None:
    with pytest.raises(BlockedURLError, match=r"only http and https"):
        await fetcher(LOCAL).invoke({"url": server.url("/redirect?to=file:///etc/passwd")},
                                    tool_context)


async def test_relative_redirects_and_chains_are_followed(server: Any, tool_context: Any
                                                          ) -> None:
    tool = fetcher(LOCAL, max_redirects=3)
    result = await tool.invoke({"url": server.url("/redirect-chain?n=3")}, tool_context)
    assert result["final_url"] == server.url("/article")
    assert len(result["redirects"]) == 3
    with pytest.raises(ToolError, match=r"more than 3 redirects"):
        await tool.invoke({"url": server.url("/redirect-chain?n=4")}, tool_context)
    with pytest.raises(ToolError, match=r"more than 3 redirects"):
        await tool.invoke({"url": server.url("/redirect-loop")}, tool_context)


# ----------------------------------------------------------------------------- pinning, TLS

async def test_connection_goes_to_the_checked_address(server: Any, tool_context: Any) -> None:
    """A resolver that answers differently on a second lookup (DNS rebinding) is asked once
    per hop: the connection uses the address that was checked."""
    answers = [["127.0.0.1"], ["10.9.9.9"]]
    calls: list[tuple[str, int]] = []

    async def rebinding(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return answers[min(len(calls) - 1, 1)]

    tool = WebFetchTool(WebSettings(policy=AddressPolicy.from_strings(["127.0.0.1/32"])),
                        resolver=rebinding)
    result = await tool.invoke(
        {"url": f"http://rebind.example:{server.port}/echo-host"}, tool_context)
    assert calls == [("rebind.example", server.port)]
    assert json.loads(result["content"])["host"] == f"rebind.example:{server.port}"
    assert result["address"] == "127.0.0.1"


async def test_a_name_with_any_blocked_address_is_refused(tool_context: Any) -> None:
    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "127.0.0.1"]

    tool = WebFetchTool(WebSettings(), resolver=mixed)
    with pytest.raises(BlockedURLError, match=r"loopback"):
        await tool.invoke({"url": "http://mixed.example/"}, tool_context)


async def test_https_pinned_to_the_address_verifies_the_name(tls_server: Any,
                                                             tool_context: Any) -> None:
    server, ca = tls_server

    async def resolver(host: str, port: int) -> list[str]:
        assert host == "pinned.example"
        return ["127.0.0.1"]

    context = ca.client_ssl_context() if hasattr(ca, "client_ssl_context") else None
    if context is None:
        import ssl

        context = ssl.create_default_context()
        ca.configure_trust(context)
    tool = WebFetchTool(WebSettings(policy=AddressPolicy.from_strings(["127.0.0.1/32"])),
                        resolver=resolver, verify=context)
    url = f"https://pinned.example:{server.port}/echo-host"
    result = await tool.invoke({"url": url}, tool_context)
    assert json.loads(result["content"])["host"] == f"pinned.example:{server.port}"
    assert server.sni[-1] == "pinned.example", "SNI carries the name, not the address"

    async def wrong(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    mismatch = WebFetchTool(WebSettings(policy=AddressPolicy.from_strings(["127.0.0.1/32"])),
                            resolver=wrong, verify=context)
    with pytest.raises(ToolError, match=r"cannot fetch"):
        await mismatch.invoke({"url": f"https://other.example:{server.port}/echo-host"},
                              tool_context)


# ----------------------------------------------------------------------------- caps and errors

async def test_byte_cap_truncates(server: Any, tool_context: Any) -> None:
    result = await fetcher(LOCAL).invoke({"url": server.url("/big"), "max_bytes": 10_000},
                                         tool_context)
    assert result["truncated"] is True and result["bytes"] == 10_000
    assert len(result["content"]) == 10_000
    with pytest.raises(ToolInputError, match=r"max_bytes_limit"):
        await fetcher(LOCAL, max_bytes_limit=100, max_bytes=50).invoke(
            {"url": server.url("/big"), "max_bytes": 1000}, tool_context)


async def test_time_cap(server: Any, tool_context: Any) -> None:
    with pytest.raises(ToolError, match=r"longer than 0.5 s") as info:
        await fetcher(LOCAL).invoke({"url": server.url("/slow"), "timeout": 0.5}, tool_context)
    assert info.value.retriable is True


@pytest.mark.parametrize(("status", "retriable"), [(404, False), (503, True), (429, True)])
async def test_http_errors(server: Any, tool_context: Any, status: int, retriable: bool) -> None:
    with pytest.raises(ToolError, match=f"HTTP {status}") as info:
        await fetcher(LOCAL).invoke({"url": server.url(f"/status/{status}")}, tool_context)
    assert info.value.retriable is retriable


async def test_unresolvable_name_is_a_retriable_error(tool_context: Any) -> None:
    with pytest.raises(ToolError, match=r"cannot resolve") as info:
        await fetcher().invoke({"url": "http://no-such-host.invalid/"}, tool_context)
    assert info.value.retriable is True


async def test_connection_refused_is_reported(tool_context: Any) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ToolError, match=r"cannot fetch"):
        await fetcher(LOCAL).invoke({"url": f"http://127.0.0.1:{port}/"}, tool_context)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"allow_networks"):
        WebSettings.from_section({"allow_networks": ["not-a-net"]})
    with pytest.raises(ConfigError, match=r"unknown key"):
        WebSettings.from_section({"alow_networks": []})
    with pytest.raises(ConfigError, match=r"max_redirects"):
        WebSettings.from_section({"max_redirects": -1})
    settings = WebSettings.from_section({"allow_networks": ["127.0.0.1"], "timeout": 5})
    assert settings.timeout == 5.0 and len(settings.policy.allow_networks) == 1
