"""A real HTTP(S) server on 127.0.0.1 for the flowyard-web tests."""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

# Real models are loaded from installed packages only; never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on asyncio and once on trio."""
    return str(request.param)


ARTICLE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Tidal Energy in Small Harbours</title>
  <meta name="description" content="How small harbours can use tidal streams.">
</head>
<body>
  <nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/contact">Contact</a></nav>
  <header><h1>Harbour Weekly</h1></header>
  <main>
    <article>
      <h1>Tidal Energy in Small Harbours</h1>
      <p>Small harbours see two high tides a day, and the water that rushes through a narrow
      entrance carries a surprising amount of energy. Engineers in several coastal towns have
      started to place compact turbines in these channels.</p>
      <p>The turbines sit on the sea bed and turn slowly, which keeps them safe for fish and
      seals. A single unit can power the harbour lights, the ice plant and the fuel pumps for
      most of the year, according to the <a href="/reports/2024">harbour authority report</a>.</p>
      <h2>Costs and maintenance</h2>
      <p>Maintenance is the largest cost: barnacles and weed grow on every moving part, and
      divers must clean the blades twice a year. Even so, the payback time is under eight
      years in the towns that reported figures.</p>
      <table><tr><th>Town</th><th>Output (kW)</th></tr><tr><td>Porthmoor</td><td>120</td></tr>
      </table>
    </article>
  </main>
  <aside><h3>Advertisement</h3><p>Buy our boat paint today!</p></aside>
  <footer><p>Copyright Harbour Weekly. All rights reserved.</p></footer>
</body>
</html>
"""

LATIN1_PAGE = ("<html><head><title>Caf\xe9</title></head><body><article><p>Le caf\xe9 du port "
               "ouvre \xe0 six heures, avant le retour des bateaux de p\xeache. Les marins y "
               "prennent un caf\xe9 cr\xe8me et parlent de la mar\xe9e du jour, des prix du "
               "poisson et du temps qu'il fera demain.</p></article></body></html>")


def make_pdf(lines: list[str], title: str) -> bytes:
    """A small valid PDF with one page of Helvetica text (offsets computed, not hard-coded)."""
    text = " ".join(f"({line}) Tj 0 -28 Td" for line in lines)
    stream = f"BT /F1 20 Tf 72 720 Td {text} ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Title ({title}) >>".encode(),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += (b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n"
            % (len(objects) + 1, xref))
    return bytes(out)


PDF = make_pdf(["Tidal energy report", "Turbines in harbour channels"], "Harbour Tides")


class _Handler(BaseHTTPRequestHandler):
    server_version = "flowyard-test/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes | str, content_type: str = "text/html; "
              "charset=utf-8", headers: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        self.server.hits.append({"path": self.path, "host": self.headers.get("Host")})
        port = self.server.server_address[1]
        if path == "/article":
            self._send(200, ARTICLE)
        elif path == "/latin1":
            self._send(200, LATIN1_PAGE.encode("latin-1"), "text/html; charset=iso-8859-1")
        elif path == "/plain":
            self._send(200, "just some plain text\n", "text/plain; charset=utf-8")
        elif path == "/json":
            self._send(200, json.dumps({"ok": True}), "application/json")
        elif path == "/report.pdf":
            self._send(200, PDF, "application/pdf")
        elif path == "/binary":
            self._send(200, bytes(range(256)), "application/octet-stream")
        elif path == "/big":
            self._send(200, b"x" * 1_000_000, "text/plain")
        elif path == "/slow":
            time.sleep(2)
            self._send(200, "late", "text/plain")
        elif path == "/echo-host":
            self._send(200, json.dumps({"host": self.headers.get("Host")}), "application/json")
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), "status page", "text/plain")
        elif path == "/redirect":
            self._send(302, "", headers={"Location": query["to"][0]})
        elif path == "/redirect-relative":
            self._send(301, "", headers={"Location": "/article"})
        elif path == "/redirect-loop":
            self._send(302, "", headers={"Location": "/redirect-loop"})
        elif path == "/redirect-chain":
            hops = int(query.get("n", ["0"])[0])
            target = "/article" if hops <= 1 else f"/redirect-chain?n={hops - 1}"
            self._send(307, "", headers={"Location": target})
        elif path == "/search":
            self._search(query)
        else:
            self._send(404, "not found", "text/plain")
        del port

    def _search(self, query: dict[str, list[str]]) -> None:
        if query.get("format") != ["json"]:
            self._send(403, "format not allowed", "text/plain")
            return
        q = query["q"][0]
        if q == "fail":
            self._send(503, "overloaded", "text/plain")
            return
        results = [{"title": f"Result {i} for {q}", "url": f"https://example.org/{i}",
                    "content": f"Snippet {i} about {q}", "engines": ["duckduckgo", "brave"],
                    "publishedDate": None} for i in range(1, 8)]
        results.insert(2, {"title": "no url", "content": "dropped"})
        self._send(200, json.dumps({"query": q, "results": results,
                                    "params": {k: v[0] for k, v in query.items()}}),
                   "application/json")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up early (time-cap tests) are expected: stay quiet for those."""
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError,
                                              ssl.SSLError)):
            super().handle_error(request, client_address)


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 (optionally TLS) recording every request."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.httpd = _QuietServer(("127.0.0.1", 0), _Handler)
        self.httpd.hits = []  # type: ignore[attr-defined]
        self.sni: list[str | None] = []
        if ssl_context is not None:
            ssl_context.sni_callback = lambda sock, name, ctx: self.sni.append(name)
            self.httpd.socket = ssl_context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def hits(self) -> list[dict[str, Any]]:
        return self.httpd.hits  # type: ignore[attr-defined,no-any-return]

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    """A plain HTTP server on 127.0.0.1."""
    srv = LocalServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[LocalServer, Any]]:
    """An HTTPS server on 127.0.0.1 with a certificate for ``pinned.example`` from a test CA
    (trustme); yields ``(server, ca)``."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("pinned.example")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    srv = LocalServer(context)
    yield srv, ca
    srv.close()
