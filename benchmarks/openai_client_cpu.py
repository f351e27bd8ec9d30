"""Throughput and client CPU per request of the flowyard-openai provider.

A mock OpenAI-compatible server (``flowyard_openai.mock_server``, 20 ms latency per request)
runs in a separate process; this process sends chat completions at concurrency 8 and 64 and
measures, per client:

* throughput: requests per second of wall-clock time;
* client CPU per request: this process's CPU time (user + system, ``time.process_time``)
  divided by the number of requests, in milliseconds.

Clients measured in the same run (the baselines are raw httpx and raw aiohttp on the same
event loop):

* ``raw httpx``    - ``httpx.AsyncClient.post`` + ``response.json()`` (httpx's own pool);
* ``raw aiohttp``  - ``aiohttp.ClientSession.post`` + ``response.json()`` (asyncio only);
* ``plugin``       - ``OpenAIProvider.chat`` with the default ``backend="auto"`` (on asyncio
  the aiohttp session under the aiohttp-backed httpx client, which ``request_json`` uses
  directly; httpx's own sharded pools on trio);
* ``plugin/httpx`` - ``OpenAIProvider.chat`` forced onto httpx's own transport;
* ``plugin+gateway`` - ``stack.llm.chat`` over the plugin (``backend="auto"``): the gateway's
  model registry, rate limiters, circuit breaker, cost and ``llm.call`` event on top.

The machine is shared (other benchmarks, other processes), so absolute figures move from run
to run: ``--repeat N`` runs every measurement N times, interleaved, and reports medians; the
ratios to raw aiohttp and raw httpx are taken within each round (same moment, same load) and
their median is reported.

Targets:

* issue 17 (item 5): plugin at most 0.5 ms client CPU per request at concurrency 64 on
  asyncio, reported with its ratio to raw aiohttp measured in the same run (the issue's
  figures: 0.55 ms before, raw aiohttp 0.2 ms);
* issue 6: plugin never worse than raw httpx on trio.

Usage: ``python benchmarks/openai_client_cpu.py [--requests-8 N] [--requests-64 N]
[--latency SECONDS] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx

BODY = {"model": "mock-model", "messages": [{"role": "user", "content": "Say hello to Paris."}],
        "max_tokens": 16}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(latency: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowyard_openai.mock_server", "--port", str(port),
         "--latency", str(latency)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("mock server did not start")


async def drive(call: Callable[[], Awaitable[Any]], concurrency: int, total: int
                ) -> tuple[float, float]:
    """Run ``total`` calls with ``concurrency`` workers; return (wall s, cpu s)."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    # warm-up: open the pool's connections
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(call)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return time.perf_counter() - wall0, time.process_time() - cpu0


async def run_raw_httpx(base: str, concurrency: int, total: int) -> tuple[float, float]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        async def call() -> None:
            response = await client.post("/chat/completions", json=BODY)
            response.raise_for_status()
            response.json()

        return await drive(call, concurrency, total)


async def run_raw_aiohttp(base: str, concurrency: int, total: int) -> tuple[float, float]:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        async def call() -> None:
            async with session.post(f"{base}/chat/completions", json=BODY) as response:
                response.raise_for_status()
                await response.json()

        return await drive(call, concurrency, total)


async def run_plugin(base: str, concurrency: int, total: int, backend: str
                     ) -> tuple[float, float]:
    from flowyard.models import ChatRequest, Message
    from flowyard_openai.provider import OpenAIProvider

    provider = OpenAIProvider("bench", base_url=base, backend=backend)
    request = ChatRequest(model="mock-model", messages=[Message.user("Say hello to Paris.")],
                          max_tokens=16)
    try:
        async def call() -> None:
            await provider.chat(request)

        return await drive(call, concurrency, total)
    finally:
        await provider.aclose()


async def run_gateway(base: str, concurrency: int, total: int) -> tuple[float, float]:
    """``stack.llm.chat`` (memory storage, no limits configured) over the plugin: the whole
    client path of a workflow's model call (model registry, rate limiters, circuit breaker,
    cost, the ``llm.call`` event) on top of ``plugin``."""
    from flowyard.hookspecs import hookimpl
    from flowyard.models import Message
    from flowyard.stack import Stack
    from flowyard_openai.provider import OpenAIProvider

    provider = OpenAIProvider("mock", base_url=base, free=True)

    class Plugin:
        @hookimpl
        def register_providers(self, register: Any, config: Any) -> None:
            register("mock", provider)

    stack = Stack(plugins=[Plugin()], config={"storage": {"url": "memory://"}})
    messages = [Message.user("Say hello to Paris.")]
    async with stack:
        try:
            async def call() -> None:
                await stack.llm.chat(messages, model="mock/mock-model", max_tokens=16)

            return await drive(call, concurrency, total)
        finally:
            await provider.aclose()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


#: Issue 17's target: client CPU per request of the plugin at concurrency 64 on asyncio, ms.
TARGET_MS = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description="flowyard-openai client CPU benchmark")
    parser.add_argument("--requests-8", type=int, default=600)
    parser.add_argument("--requests-64", type=int, default=1920)
    parser.add_argument("--latency", type=float, default=0.02, help="server latency, seconds")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every measurement (medians are reported)")
    args = parser.parse_args()
    proc, base = start_server(args.latency)
    # (loop, concurrency, client) -> [(req/s, CPU ms/req)], one per round
    runs: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    plan: list[tuple[str, str, Callable[..., Awaitable[tuple[float, float]]], tuple[Any, ...]]] = [
        ("asyncio", "raw httpx", run_raw_httpx, ()),
        ("asyncio", "raw aiohttp", run_raw_aiohttp, ()),
        ("asyncio", "plugin", run_plugin, ("auto",)),
        ("asyncio", "plugin/httpx", run_plugin, ("httpx",)),
        ("asyncio", "plugin+gateway", run_gateway, ()),
        ("trio", "raw httpx", run_raw_httpx, ()),
        ("trio", "plugin", run_plugin, ("auto",)),
        ("trio", "plugin+gateway", run_gateway, ()),
    ]
    try:
        for round_ in range(args.repeat):
            for concurrency, total in ((8, args.requests_8), (64, args.requests_64)):
                for backend, label, job, extra in plan:
                    wall, cpu = anyio.run(job, base, concurrency, total, *extra,
                                          backend=backend)
                    rps, ms = total / wall, cpu / total * 1000
                    runs.setdefault((backend, concurrency, label), []).append((rps, ms))
                    print(f"  round {round_ + 1} {backend:7} c={concurrency:<3} {label:15} "
                          f"{rps:8.0f} req/s {ms:7.3f} ms CPU/req", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(10)

    def cpu_ratio(key: tuple[str, int, str], baseline: str) -> float | None:
        """Median over rounds of key's CPU per request / the baseline's in the same round."""
        other = runs.get((key[0], key[1], baseline))
        if other is None:
            return None
        return median([a[1] / b[1] for a, b in zip(runs[key], other, strict=True)])

    print(f"\nflowyard-openai client benchmark: mock server latency {args.latency * 1000:.0f} ms "
          f"(separate process), {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"httpx {httpx.__version__}, {args.repeat} round(s), medians")
    print(f"{'loop':8}{'conc':>5}  {'client':16}{'req/s':>9}{'CPU ms/req':>12}"
          f"{'CPU vs raw httpx':>18}{'CPU vs raw aiohttp':>20}")
    for (backend, concurrency, label), values in runs.items():
        rps = median([v[0] for v in values])
        ms = median([v[1] for v in values])
        vs_httpx = cpu_ratio((backend, concurrency, label), "raw httpx")
        vs_aiohttp = cpu_ratio((backend, concurrency, label), "raw aiohttp")
        print(f"{backend:8}{concurrency:>5}  {label:16}{rps:>9.0f}{ms:>12.3f}"
              f"{vs_httpx:>17.2f}x" + (f"{vs_aiohttp:>19.2f}x" if vs_aiohttp else f"{'-':>20}"))
    key64 = ("asyncio", 64, "plugin")
    plugin64 = median([v[1] for v in runs[key64]])
    aiohttp64 = median([v[1] for v in runs[("asyncio", 64, "raw aiohttp")]])
    print(f"\ntarget (issue 17): plugin on asyncio at concurrency 64 uses {plugin64:.3f} ms CPU "
          f"per request (target <= {TARGET_MS} ms): "
          f"{'met' if plugin64 <= TARGET_MS else 'NOT met'}; "
          f"{cpu_ratio(key64, 'raw aiohttp'):.2f}x raw aiohttp ({aiohttp64:.3f} ms) in the "
          f"same run")
    for concurrency in (8, 64):
        ratio = cpu_ratio(("trio", concurrency, "plugin"), "raw httpx")
        print(f"target (issue 6): plugin on trio at concurrency {concurrency} uses "
              f"{ratio:.2f}x the CPU of raw httpx per request (target: not worse): "
              f"{'met' if ratio is not None and ratio <= 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
