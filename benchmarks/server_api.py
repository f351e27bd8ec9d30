"""flowyard-server's HTTP API against the bare framework under it, printed as ratios.

Two measurements, each against a baseline measured in the same run, on loopback only:

(a) **Task submit + get at concurrency 64.** ``--concurrency`` (64) client coroutines each
    loop ``POST /v1/tasks`` (a registered one-step workflow, inputs checked) then
    ``GET /v1/tasks/{id}`` for ``--seconds`` seconds in all (after a warm-up). The server under
    test is ``flowyard_server.app.create_app`` with its security (an API key, HMAC-checked),
    metrics and body-limit middleware, on memory storage (``--storage sqlite`` for a SQLite
    file with the SQL task queue) and without a worker, so tasks stay queued and only the
    API is measured. The baseline is a FastAPI app with a trivial ``POST /v1/tasks`` (a dict
    body, answers an id) and ``GET /v1/tasks/{id}``, on the same uvicorn settings (one
    process, ``access_log=False``, ``log_level=warning``, no server header). Reported:
    requests/s and server CPU per request (µs; from ``/proc/<pid>/stat`` of the server
    process, so the load generator's CPU is not counted), and their ratios API / bare.
    **Target: the API costs at most 2x the bare framework per request** (CPU per request
    ratio <= 2; requests/s ratio >= 0.5). Both servers stay up and are measured in
    ``--rounds`` alternated rounds (the medians are reported), so load from other processes
    on the machine hits both alike.

(b) **SSE fan-out.** ``--subscribers`` (200) clients open ``GET /v1/runs/{id}/events`` of
    one run before it starts (its first step sleeps 1 s; then ``--steps`` echo steps run on
    the server's in-process worker), and read until the stream ends. Reported: events
    delivered per second (over all subscribers, first event delivered to last stream end)
    and server CPU per delivered event. The baseline is an ``sse-starlette`` endpoint of the
    bare app that sends each subscriber the same number of events of the same size from
    memory.

The load generator is aiohttp in this process; the servers run in child processes of this
script (``--child``). On a 2-core machine the load generator and the server share the cores,
which is why CPU per request/event (server process only) is the figure to compare.

``FY_BENCH_PROFILE=FILE`` profiles the API server child with cProfile into ``FILE``.

Usage: .venv/bin/python benchmarks/server_api.py [--seconds 10] [--rounds 5] [--concurrency 64]
       [--subscribers 200] [--steps 100] [--storage memory|sqlite] [--only a|b]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ONE_STEP = """\
name: noop
inputs:
  who: {type: string, default: world}
steps:
  - id: greet
    uses: echo
    with: {value: "Hello, {{ inputs.who }}"}
"""


def fan_out_workflow(steps: int) -> str:
    """A workflow whose first step sleeps 1 s (subscribers connect meanwhile), then
    ``steps`` echo steps in a chain."""
    lines = ["name: fanout", "steps:", "  - id: s0", "    uses: sleep",
             "    with: {seconds: 1}"]
    for i in range(1, steps + 1):
        lines += [f"  - id: s{i}", "    uses: echo", f"    depends_on: [s{i - 1}]",
                  f"    with: {{value: step {i}}}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- child servers

def _bare_app() -> Any:
    from fastapi import FastAPI
    from sse_starlette import EventSourceResponse

    app = FastAPI()
    counter = iter(range(1, 1 << 62))

    @app.post("/v1/tasks", status_code=201)
    async def submit(body: dict[str, Any]) -> dict[str, Any]:
        return {"id": f"{next(counter):032x}", "status": "queued", "target": body.get("target")}

    @app.get("/v1/tasks/{task_id}")
    async def get(task_id: str) -> dict[str, Any]:
        return {"id": task_id, "status": "queued"}

    @app.get("/events")
    async def events(n: int, size: int) -> EventSourceResponse:
        data = "x" * size

        async def stream() -> Any:
            for i in range(1, n + 1):
                yield {"id": str(i), "event": "step.completed", "data": data}

        return EventSourceResponse(stream())

    return app


def _api_app(storage: str, worker: bool) -> tuple[Any, str]:
    import anyio
    from flowyard import Stack
    from flowyard_server.app import create_app
    from flowyard_server.keys import KeyStore
    from flowyard_server.settings import ServerSettings
    from flowyard_server.worker import Worker

    url = "memory://"
    if storage == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp(prefix='fy-bench-')}/service.db"
    stack = Stack.default(config={"storage": {"url": url}, "models": {"default": "fake/echo"}})
    settings = ServerSettings(concurrency=4, poll_interval=0.2, sse_poll=0.1)

    async def key() -> str:
        await stack.open()
        return (await KeyStore(stack.storage).create("bench"))[0]

    api_key = anyio.run(key)
    app = create_app(stack, settings, worker=Worker(stack, settings) if worker else None)
    return app, api_key


def child(kind: str, port: int, storage: str) -> None:
    """Serve the bare app or the API on ``port``; print ``READY <key>`` once listening."""
    if kind == "bare":
        app, key = _bare_app(), "-"
    else:
        app, key = _api_app(storage, worker=kind == "api-worker")

    import uvicorn

    profile = os.environ.get("FY_BENCH_PROFILE") if kind != "bare" else None
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()

    class Announce(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if profiler is not None:
                profiler.enable()
            print(f"READY {key}", flush=True)

        async def shutdown(self, sockets: Any = None) -> None:
            if profiler is not None:  # uvicorn re-raises SIGTERM once it returns
                profiler.disable()
                profiler.dump_stats(str(profile))
            await super().shutdown(sockets)

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            access_log=False, lifespan="on", server_header=False)
    Announce(config).run()


# ---------------------------------------------------------------------------- parent side

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process ``pid`` used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Child:
    """A server child process of this script: its URL, API key and CPU clock."""

    def __init__(self, kind: str, storage: str = "memory") -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--child", kind, "--port", str(self.port),
             "--storage", storage], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "FLOWYARD_PLUGINS": os.environ.get("FLOWYARD_PLUGINS",
                                                                  "builtin,server,sql")})
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if not line or line[0] != "READY":
            self.process.kill()
            raise RuntimeError(f"the {kind} server did not start")
        self.key = line[1]
        self.headers = {"Authorization": f"Bearer {self.key}"} if self.key != "-" else {}

    def cpu(self) -> float:
        """CPU seconds of the server process so far."""
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def submit_get(server: Child, concurrency: int, seconds: float, warmup: float
                     ) -> tuple[float, float]:
    """Drive ``POST /v1/tasks`` + ``GET /v1/tasks/{id}`` loops; return
    ``(requests per second, server CPU µs per request)`` over the measured window."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(server.url, headers=server.headers,
                                     connector=connector) as http:
        if server.key != "-":
            async with http.post("/v1/workflows", json={"source": ONE_STEP}) as r:
                assert r.status == 201, await r.text()
        state = {"count": 0, "stop": False}

        async def loop() -> None:
            while not state["stop"]:
                async with http.post("/v1/tasks", json={"target": "noop",
                                                        "inputs": {"who": "bench"}}) as r:
                    assert r.status == 201, await r.text()
                    task_id = (await r.json())["id"]
                async with http.get(f"/v1/tasks/{task_id}") as r:
                    assert r.status == 200, await r.text()
                    await r.read()
                state["count"] += 2

        runners = [asyncio.create_task(loop()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        count0, cpu0, t0 = state["count"], server.cpu(), time.perf_counter()
        await asyncio.sleep(seconds)
        count1, cpu1, t1 = state["count"], server.cpu(), time.perf_counter()
        state["stop"] = True
        await asyncio.gather(*runners)
    done = count1 - count0
    return done / (t1 - t0), (cpu1 - cpu0) / done * 1e6


async def _read_sse(http: Any, path: str, first: list[float]) -> tuple[int, int]:
    """Read one event stream to its end; return ``(events, bytes of data)``; append the time
    of its first event to ``first``."""
    events = size = 0
    async with http.get(path, timeout=None) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"data:"):
                if not events:
                    first.append(time.perf_counter())
                events += 1
                size += len(line) - 6
    return events, size


async def fan_out_api(server: Child, subscribers: int, steps: int) -> dict[str, float]:
    """200 subscribers of one run of the API; delivered events/s, CPU µs/event, sizes."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(server.url, headers=server.headers, connector=connector,
                                     timeout=timeout) as http:
        async with http.post("/v1/workflows", json={"source": fan_out_workflow(steps)}) as r:
            assert r.status == 201, await r.text()
        cpu0 = server.cpu()
        async with http.post("/v1/tasks", json={"target": "fanout"}) as r:
            task = await r.json()
        first: list[float] = []
        results = await asyncio.gather(*(_read_sse(http, f"/v1/runs/{task['run_id']}/events",
                                                   first) for _ in range(subscribers)))
        t1, cpu1 = time.perf_counter(), server.cpu()
    events = sum(e for e, _ in results)
    return {"events": events, "per_subscriber": events / subscribers,
            "mean_size": sum(s for _, s in results) / max(1, events),
            "rate": events / (t1 - min(first)), "cpu_us": (cpu1 - cpu0) / events * 1e6,
            "min_per_subscriber": min(e for e, _ in results)}


async def fan_out_bare(server: Child, subscribers: int, n: int, size: int
                       ) -> dict[str, float]:
    """The same number of events of the same size from the bare sse-starlette endpoint."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(server.url, connector=connector, timeout=timeout) as http:
        cpu0 = server.cpu()
        first: list[float] = []
        results = await asyncio.gather(*(_read_sse(http, f"/events?n={n}&size={size}",
                                                   first) for _ in range(subscribers)))
        t1, cpu1 = time.perf_counter(), server.cpu()
    events = sum(e for e, _ in results)
    return {"events": events, "rate": events / (t1 - min(first)),
            "cpu_us": (cpu1 - cpu0) / events * 1e6}


def main() -> None:
    """Parse the options, run (a) and (b), print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", choices=["bare", "api", "api-worker"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--storage", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--only", choices=["a", "b"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.port, args.storage)
        return
    print(f"server_api: loopback, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"storage {args.storage}")
    if args.only in (None, "a"):
        rounds: dict[str, list[tuple[float, float]]] = {"bare": [], "api": []}
        servers = {kind: Child(kind, args.storage) for kind in rounds}
        try:
            for _ in range(args.rounds):  # alternated: a busy neighbour hits both alike
                for kind, server in servers.items():
                    rounds[kind].append(asyncio.run(submit_get(
                        server, args.concurrency, args.seconds / args.rounds, args.warmup)))
        finally:
            for server in servers.values():
                server.stop()
        bare_rps = statistics.median(r for r, _ in rounds["bare"])
        bare_cpu = statistics.median(c for _, c in rounds["bare"])
        api_rps = statistics.median(r for r, _ in rounds["api"])
        api_cpu = statistics.median(c for _, c in rounds["api"])
        print(f"(a) submit+get, concurrency {args.concurrency}, {args.rounds} alternated rounds "
              f"of {args.seconds / args.rounds:g} s each (medians):")
        print(f"    bare FastAPI  {bare_rps:8.0f} req/s  {bare_cpu:7.0f} µs CPU/req")
        print(f"    flowyard API  {api_rps:8.0f} req/s  {api_cpu:7.0f} µs CPU/req")
        verdict = "meets" if api_cpu / bare_cpu <= 2.0 else "MISSES"
        print(f"    ratio API/bare: {api_rps / bare_rps:.2f}x req/s, "
              f"{api_cpu / bare_cpu:.2f}x CPU/req ({verdict} the 2x target)")
    if args.only in (None, "b"):
        server = Child("api-worker", args.storage)
        try:
            api = asyncio.run(fan_out_api(server, args.subscribers, args.steps))
        finally:
            server.stop()
        if api["min_per_subscriber"] != api["per_subscriber"]:
            print("    warning: subscribers saw different numbers of events")
        server = Child("bare")
        try:
            bare = asyncio.run(fan_out_bare(server, args.subscribers,
                                            round(api["per_subscriber"]),
                                            round(api["mean_size"])))
        finally:
            server.stop()
        print(f"(b) SSE fan-out, {args.subscribers} subscribers of one run, "
              f"{api['per_subscriber']:.0f} events each ({api['mean_size']:.0f} B of data):")
        print(f"    bare sse-starlette  {bare['rate']:9.0f} events/s  "
              f"{bare['cpu_us']:6.1f} µs CPU/event")
        print(f"    flowyard API        {api['rate']:9.0f} events/s  "
              f"{api['cpu_us']:6.1f} µs CPU/event")
        print(f"    ratio API/bare: {api['cpu_us'] / bare['cpu_us']:.2f}x CPU/event")


if __name__ == "__main__":
    main()
