"""``web.fetch``: download a page through the SSRF guard and extract its text.

Each hop (the first request and every redirect) goes: check the scheme → resolve the host
and check every address (:mod:`flowyard_web.ssrf`) → connect to the checked address itself
(the URL's host is replaced by the IP; the ``Host`` header carries the name, and for https
the TLS server name (SNI) and certificate check use the name through httpcore's
``sni_hostname`` request extension) → read at most ``max_bytes``. Redirects are followed by
this code, never by httpx, so each target is checked again, by the SSRF guard and by the
stack's egress guards (:func:`flowyard.check_egress`, kind ``url``: ``[guards.egress]``).
A fresh connection pool per hop keeps a TLS connection made for one name from being reused
for another on the same address.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.to_thread
import httpx
from flowyard import BaseTool, Config, ToolContext, ToolError, ToolInputError, check_egress

from flowyard_web.settings import WebSettings
from flowyard_web.ssrf import BlockedURLError, Resolver, resolve_checked, system_resolver

__all__ = ["WebFetchTool", "extract_text"]

_REDIRECTS = {301, 302, 303, 307, 308}
_RETRIABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml+xml",
               "application/javascript", "application/ld+json", "application/rss+xml",
               "application/atom+xml")


def _is_html(content_type: str) -> bool:
    return content_type in ("text/html", "application/xhtml+xml")


def _is_text(content_type: str) -> bool:
    return (content_type.startswith(_TEXT_TYPES) or content_type.endswith(("+json", "+xml"))
            or content_type == "")


def extract_text(html: str | bytes, *, url: str | None, output: str, include_links: bool
                 ) -> tuple[str, str | None, str]:
    """Extract the main text of an HTML page with trafilatura.

    Args:
        html: the page (bytes: trafilatura detects the encoding).
        url: the page's URL (for relative links and metadata).
        output: ``"markdown"`` or ``"text"``.
        include_links: keep hyperlinks (markdown only).

    Returns:
        ``(content, title, extraction)``: ``extraction`` is ``"main"`` when the main content
        was found, ``"fulltext"`` when trafilatura found no main content and the page's whole
        visible text (``trafilatura.html2txt``) is returned instead, ``"empty"`` when there is
        no text at all.
    """
    import trafilatura

    text = trafilatura.extract(html, url=url, output_format="markdown" if output == "markdown"
                               else "txt", include_links=include_links and output == "markdown",
                               include_tables=True, include_comments=False,
                               include_formatting=output == "markdown", favor_recall=True)
    title = None
    metadata = trafilatura.extract_metadata(html if isinstance(html, str)
                                            else html.decode("utf-8", "replace"),
                                            default_url=url)
    if metadata is not None and metadata.title:
        title = metadata.title
    if text and text.strip():
        return text.strip(), title, "main"
    fallback = trafilatura.html2txt(html)
    if fallback and fallback.strip():
        return fallback.strip(), title, "fulltext"
    return "", title, "empty"


def _pdf_text(body: bytes, url: str) -> tuple[str, str | None]:
    """Return ``(text, title)`` of a PDF (pypdf; pages separated by blank lines).

    Raises:
        ToolError: the PDF cannot be parsed (damaged, encrypted).
    """
    import io

    import pypdf
    from pypdf.errors import PdfReadError

    try:
        reader = pypdf.PdfReader(io.BytesIO(body))
        if reader.is_encrypted:
            raise ToolError(f"web.fetch: the PDF at {url} is encrypted", tool="web.fetch")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        title = reader.metadata.title if reader.metadata and reader.metadata.title else None
    except (PdfReadError, ValueError, KeyError) as exc:
        raise ToolError(f"web.fetch: cannot read the PDF at {url}: {exc}",
                        tool="web.fetch") from exc
    return "\n\n".join(p for p in pages if p), title


def _charset(content_type_header: str) -> str | None:
    for part in content_type_header.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip("\"' ")
    return None


class WebFetchTool(BaseTool):
    """``web.fetch``: GET a URL (http/https only) and return its content as markdown, text or
    raw HTML.

    Arguments: ``url``; ``format`` (``"markdown"`` default, ``"text"``, ``"html"``: raw body);
    ``include_links`` (markdown links, default true); ``max_bytes`` (body cap, at most
    ``[web] max_bytes_limit``); ``timeout`` (seconds for the whole fetch including redirects,
    at most ``[web] max_timeout``).

    Returns:
        ``{"url", "final_url", "status", "content_type", "title", "content", "format",
        "extraction", "bytes", "truncated", "redirects", "address", "elapsed_s"}``;
        ``redirects`` lists the URLs that redirected, ``address`` the IP connected to last.
        PDFs (``application/pdf``) are returned as their text (``extraction: "pdf"``).

    Raises:
        BlockedURLError: a URL or redirect target is refused by the SSRF guard.
        GuardDenied: a redirect target is refused by the stack's egress guards.
        ToolInputError: bad arguments (not a URL, limits above the configured maximum).
        ToolError: DNS failure, connection error, time cap hit, too many redirects, an HTTP
            error status (retriable for 408, 425, 429 and 5xx), an unsupported content type.
    """

    name = "web.fetch"
    description = ("Fetch a web page (http or https) and return its main text as markdown or "
                   "plain text. Private, loopback and cloud-metadata addresses are refused.")
    parameters = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "minLength": 1, "maxLength": 8192,
                    "description": "The http(s) URL to fetch."},
            "format": {"enum": ["markdown", "text", "html"], "default": "markdown",
                       "description": "markdown or text: extracted main content; html: the "
                                      "raw body."},
            "include_links": {"type": "boolean", "default": True,
                              "description": "Keep hyperlinks in markdown output."},
            "max_bytes": {"type": "integer", "minimum": 1,
                          "description": "Read at most this many body bytes."},
            "timeout": {"type": "number", "exclusiveMinimum": 0,
                        "description": "Seconds for the whole fetch, redirects included."},
        },
        "required": ["url"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ("network",)
    #: egress-relevant arguments for the stack's egress guards (``[guards.egress]``)
    egress = {"url": "url"}

    def __init__(self, settings: WebSettings | None = None, *, resolver: Resolver | None = None,
                 verify: Any = True) -> None:
        """Args:
        settings: the ``[web]`` settings (defaults when None).
        resolver: ``async (host, port) -> [address, ...]``; the system resolver by default.
        verify: TLS verification for httpx (True, an ``ssl.SSLContext`` or a CA bundle
            path); never disable it outside tests.
        """
        self.settings = settings or WebSettings()
        self.resolver = resolver or system_resolver
        self.verify = verify
        self._ssl_context: ssl.SSLContext | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context shared by this tool's per-hop clients (built once: loading the CA
        bundle is the most expensive part of creating an httpx client).
        """
        if self._ssl_context is None:
            if isinstance(self.verify, ssl.SSLContext):
                self._ssl_context = self.verify
            else:
                self._ssl_context = httpx.create_ssl_context(verify=self.verify)
        return self._ssl_context

    @classmethod
    def from_config(cls, config: Config) -> WebFetchTool:
        """Build the tool from the ``[web]`` section.

        Raises:
            ConfigError: the section is invalid.
        """
        return cls(WebSettings.from_section(config.section("web")))

    def _limits(self, arguments: Mapping[str, Any]) -> tuple[int, float]:
        max_bytes = arguments.get("max_bytes", self.settings.max_bytes)
        if max_bytes > self.settings.max_bytes_limit:
            raise ToolInputError(f"web.fetch: max_bytes {max_bytes} exceeds [web] "
                                 f"max_bytes_limit {self.settings.max_bytes_limit}",
                                 tool=self.name)
        timeout = arguments.get("timeout", self.settings.timeout)
        if timeout > self.settings.max_timeout:
            raise ToolInputError(f"web.fetch: timeout {timeout} s exceeds [web] max_timeout "
                                 f"{self.settings.max_timeout} s", tool=self.name)
        return int(max_bytes), float(timeout)

    def _parse(self, raw: str, *, initial: bool) -> httpx.URL:
        try:
            url = httpx.URL(raw)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            if initial:
                raise ToolInputError(f"web.fetch: not a valid URL {raw!r}: {exc}",
                                     tool=self.name) from exc
            raise ToolError(f"web.fetch: redirect to an invalid URL {raw!r}: {exc}",
                            tool=self.name) from exc
        if url.scheme not in ("http", "https"):
            raise BlockedURLError(f"web.fetch: blocked {raw}: only http and https URLs are "
                                  f"allowed, not {url.scheme or 'a relative URL'!r}", url=raw)
        if not url.host:
            raise BlockedURLError(f"web.fetch: blocked {raw}: the URL has no host", url=raw)
        if url.userinfo:
            raise BlockedURLError(f"web.fetch: blocked {raw}: credentials in URLs are not "
                                  f"allowed", url=raw)
        return url

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Fetch; see the class docstring for arguments, result and errors."""
        max_bytes, timeout = self._limits(arguments)
        output = arguments.get("format", "markdown")
        started = time.monotonic()
        try:
            with anyio.fail_after(timeout):
                fetched = await self._fetch(arguments["url"], max_bytes, context)
        except TimeoutError:
            raise ToolError(f"web.fetch: {arguments['url']} took longer than {timeout} s",
                            tool=self.name, retriable=True) from None
        status, final_url, headers, body, truncated, redirects, address = fetched
        header = headers.get("content-type", "")
        content_type = header.split(";")[0].strip().lower()
        if status >= 400:
            raise ToolError(f"web.fetch: {final_url} answered HTTP {status}", tool=self.name,
                            retriable=status in _RETRIABLE_STATUS)
        title: str | None = None
        extraction = "none"
        charset = _charset(header)
        if content_type == "application/pdf" and output != "html":
            if truncated:
                raise ToolError(f"web.fetch: the PDF at {final_url} is larger than max_bytes "
                                f"({len(body)} bytes read); raise max_bytes to read it",
                                tool=self.name)
            content, title = await anyio.to_thread.run_sync(lambda: _pdf_text(body, final_url))
            extraction = "pdf"
        elif output == "html" or not _is_html(content_type):
            if not _is_text(content_type):
                raise ToolError(f"web.fetch: {final_url} is {content_type}, not text, HTML "
                                f"or PDF", tool=self.name)
            content = body.decode(charset or "utf-8", "replace")
        else:
            source: str | bytes = body.decode(charset, "replace") if charset else body
            content, title, extraction = await anyio.to_thread.run_sync(
                lambda: extract_text(source, url=final_url, output=output,
                                     include_links=arguments.get("include_links", True)))
        return {
            "url": arguments["url"],
            "final_url": final_url,
            "status": status,
            "content_type": content_type,
            "title": title,
            "content": content,
            "format": output,
            "extraction": extraction,
            "bytes": len(body),
            "truncated": truncated,
            "redirects": redirects,
            "address": address,
            "elapsed_s": round(time.monotonic() - started, 6),
        }

    async def _fetch(self, raw_url: str, max_bytes: int, context: ToolContext | None = None
                     ) -> tuple[int, str, httpx.Headers, bytes, bool, list[str], str]:
        url = self._parse(raw_url, initial=True)
        redirects: list[str] = []
        while True:
            if redirects and context is not None:  # the first hop was checked with the call
                await check_egress(context, self, "url", str(url))
            port = url.port or (443 if url.scheme == "https" else 80)
            host = url.raw_host.decode("ascii")  # IDNA-encoded
            ip = await resolve_checked(host, port, self.settings.policy, self.resolver,
                                       url=str(url))
            pinned = url.copy_with(host=str(ip))
            host_header = host if ":" not in host else f"[{host}]"
            if url.port is not None:
                host_header = f"{host_header}:{url.port}"
            headers = {"Host": host_header, "User-Agent": self.settings.user_agent,
                       "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5"}
            extensions = {"sni_hostname": host} if url.scheme == "https" else {}
            async with httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                         verify=self.ssl_context(), timeout=None) as client:
                request = client.build_request("GET", pinned, headers=headers,
                                               extensions=extensions)
                try:
                    response = await client.send(request, stream=True)
                except httpx.HTTPError as exc:
                    raise ToolError(f"web.fetch: cannot fetch {url}: {type(exc).__name__}: "
                                    f"{exc}", tool=self.name, retriable=True) from exc
                try:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        if len(redirects) >= self.settings.max_redirects:
                            raise ToolError(f"web.fetch: more than {self.settings.max_redirects}"
                                            f" redirects from {raw_url}", tool=self.name)
                        redirects.append(str(url))
                        url = self._parse(str(url.join(response.headers["location"])),
                                          initial=False)
                        continue
                    body, truncated = await self._read(response, max_bytes)
                    return (response.status_code, str(url), response.headers, body, truncated,
                            redirects, str(ip))
                except httpx.HTTPError as exc:
                    raise ToolError(f"web.fetch: error reading {url}: {type(exc).__name__}: "
                                    f"{exc}", tool=self.name, retriable=True) from exc
                finally:
                    await response.aclose()

    @staticmethod
    async def _read(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            room = max_bytes - len(body)
            if len(chunk) > room:
                body.extend(chunk[:room])
                return bytes(body), True
            body.extend(chunk)
        return bytes(body), False
