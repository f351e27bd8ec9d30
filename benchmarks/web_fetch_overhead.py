"""Cost of web.fetch's guard and extraction, against plain httpx in the same run.

A threaded HTTP/1.0 server on 127.0.0.1 serves one article page (about 5 KB of HTML).
Baseline: a plain httpx GET with a new client per request sharing one prebuilt SSL context
(what web.fetch does per hop, to keep pinned TLS connections apart). Shown for reference: a
shared client, and a new client with httpx's default `verify=True` (which loads the CA bundle
every time). Measured: web.fetch with `format: html` (resolve + address check + pinned
request, no extraction) and `format: markdown` (plus trafilatura). Figures: median
milliseconds of N fetches and the ratio to the baseline.

Usage: .venv/bin/python benchmarks/web_fetch_overhead.py [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx

PARAGRAPH = ("<p>Small harbours see two high tides a day, and the water that rushes through a "
             "narrow entrance carries a surprising amount of energy. Engineers have started to "
             "place compact turbines in these channels.</p>\n")
PAGE = ("<html><head><title>Tides</title></head><body><nav><a href='/'>Home</a></nav><article>"
        "<h1>Tidal energy</h1>" + PARAGRAPH * 25 + "</article><footer>(c)</footer></body></html>"
        ).encode()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)


async def median_ms(call: Callable[[], Awaitable[Any]], runs: int) -> float:
    await call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def main(runs: int) -> None:
    from flowyard.context import ToolContext
    from flowyard.stack import Stack
    from flowyard_web import AddressPolicy, WebFetchTool, WebSettings

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/article"
    ctx = ToolContext(stack=Stack())
    tool = WebFetchTool(WebSettings(policy=AddressPolicy.from_strings(["127.0.0.1/32"])))
    try:
        context = httpx.create_ssl_context()

        async def plain() -> None:
            async with httpx.AsyncClient(trust_env=False, verify=context) as client:
                (await client.get(url)).raise_for_status()

        async def default_verify() -> None:
            async with httpx.AsyncClient(trust_env=False) as client:
                (await client.get(url)).raise_for_status()

        base = await median_ms(plain, runs)
        async with httpx.AsyncClient(trust_env=False) as shared:
            cases: dict[str, Callable[[], Awaitable[Any]]] = {
                "httpx, one shared client": lambda: shared.get(url),
                "httpx, new client, verify=True": default_verify,
                "web.fetch format=html": lambda: tool.invoke({"url": url, "format": "html"},
                                                             ctx),
                "web.fetch format=markdown": lambda: tool.invoke({"url": url}, ctx),
            }
            print(f"baseline  httpx GET, new client + shared SSL context: {base:8.2f} ms")
            for name, call in cases.items():
                value = await median_ms(call, runs)
                print(f"{name:34s} {value:8.2f} ms  = {value / base:5.2f} x baseline")
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    anyio.run(main, parser.parse_args().runs)
