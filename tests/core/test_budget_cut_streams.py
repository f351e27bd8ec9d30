"""Cut streams and servers that ignore ``max_tokens`` are charged, against a real HTTP server
on 127.0.0.1 (issue 15, item 6).

The server is a raw socket server: it answers a stream with ``Content-Length`` larger than
what it sends, writes some SSE deltas and closes the connection, so the client sees a cut
body exactly as from a crashed or killed upstream. The provider under test is a minimal
OpenAI-style streaming client on httpx, so only the gateway's handling is exercised.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from flowyard.context import ToolContext
from flowyard.errors import BudgetExceeded, MalformedResponseError
from flowyard.hookspecs import hookimpl
from flowyard.llm.budget import Budget, BudgetChain
from flowyard.models import ChatChunk, ChatRequest, ChatResponse, Event, Message, Usage
from flowyard.stack import Stack

pytestmark = pytest.mark.anyio

DELTA = "abcdefgh"  # 8 ASCII characters: 2 estimated output tokens


class CutServer:
    """``POST /stream?deltas=N&cut=1`` streams N SSE deltas of :data:`DELTA` and then closes
    the connection mid-body when ``cut=1`` (else ends with ``[DONE]``, never sending usage);
    ``POST /chat?out=N`` answers a completion reporting N output tokens whatever
    ``max_tokens`` said."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                part = conn.recv(65536)
                if not part:
                    return
                data += part
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                body += conn.recv(65536)
            self.requests += 1
            target = head.split(b" ")[1].decode()
            path, _, query = target.partition("?")
            args = dict(p.split("=") for p in query.split("&") if p)
            if path == "/chat":
                payload = json.dumps({"text": "x" * 4 * int(args["out"]),
                                      "input_tokens": 5, "output_tokens": int(args["out"])})
                raw = payload.encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(raw)).encode() + b"\r\n\r\n" + raw)
                return
            events = b"".join(b"data: " + json.dumps({"delta": DELTA}).encode() + b"\n\n"
                              for _ in range(int(args["deltas"])))
            cut = args.get("cut") == "1"
            if not cut:
                events += b"data: [DONE]\n\n"
            declared = len(events) + (4096 if cut else 0)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Content-Length: " + str(declared).encode() + b"\r\n\r\n")
            try:
                for i in range(0, len(events), 64):
                    conn.sendall(events[i:i + 64])
            except (ConnectionResetError, BrokenPipeError):
                return  # the client stopped reading (a stream stopped by the gateway)
            # cut: close with the body incomplete

    def close(self) -> None:
        self.sock.close()


class SSEProvider:
    """A minimal streaming HTTP provider (name ``cut``); the model id carries the query."""

    name = "cut"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        async with httpx.AsyncClient(timeout=10) as client:
            try:
                async with client.stream("POST", f"{self.base_url}/stream?{request.model}",
                                         json={"max_tokens": request.max_tokens}) as response:
                    async for line in response.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if line == "data: [DONE]":
                            yield ChatChunk(done=True, finish_reason="stop")
                            return
                        yield ChatChunk(delta=json.loads(line[6:])["delta"])
            except httpx.TransportError as exc:
                raise MalformedResponseError(f"stream cut: {exc}", provider=self.name,
                                             model=request.model) from exc
        raise MalformedResponseError("stream ended before [DONE]", provider=self.name,
                                     model=request.model)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{self.base_url}/chat?{request.model}",
                                         json={"max_tokens": request.max_tokens})
        data = response.json()
        return ChatResponse(message=Message.assistant(data["text"]),
                            usage=Usage(data["input_tokens"], data["output_tokens"]),
                            finish_reason="length")

    async def list_models(self) -> list[Any]:
        return []

    async def embed(self, texts: Any, *, model: str) -> list[list[float]]:
        from flowyard import BadRequestError

        raise BadRequestError(f"{model}: this streaming test server makes no embeddings")

    async def aclose(self) -> None:
        return None


@pytest.fixture
def server() -> Iterator[CutServer]:
    srv = CutServer()
    yield srv
    srv.close()


def make_stack(server: CutServer, models: list[str]) -> Stack:
    provider = SSEProvider(f"http://127.0.0.1:{server.port}")

    class Plugin:
        @hookimpl
        def register_providers(self, register, config):  # type: ignore[no-untyped-def]
            register("cut", provider)

    # $1000 per million output tokens = $0.001 per token; prompts free: with max_tokens=50
    # every call reserves exactly $0.05
    info = {f"cut/{m}": {"input_per_mtok": 0.0, "output_per_mtok": 1000.0} for m in models}
    return Stack(plugins=[Plugin()], config={"storage": {"url": "memory://"},
                                             "models": {"info": info}})


async def test_100_cut_streams_are_charged_never_past_the_budget(server: CutServer) -> None:
    model = "deltas=5&cut=1"
    stack = make_stack(server, [model])
    run = Budget(1.00, scope="run", name="cut")
    events: list[Event] = []
    outcomes: list[str] = []
    received: list[int] = []
    async with stack:
        stack.events.subscribe(events.append)
        ctx = ToolContext(stack=stack, run_id="r-cut", budget=BudgetChain((run,)))

        async def one() -> None:
            chunks = 0
            try:
                async for _ in stack.llm.stream("hi", model=f"cut/{model}", context=ctx,
                                                max_tokens=50):
                    chunks += 1
            except MalformedResponseError:
                outcomes.append("cut")
                received.append(chunks)
            except BudgetExceeded:
                outcomes.append("refused")

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(one)
        lines = await stack.storage.list_costs("r-cut")

    cut = outcomes.count("cut")
    assert cut + outcomes.count("refused") == 100
    assert cut >= 20 and all(n == 5 for n in received)
    # 5 deltas x 2 estimated tokens x $0.001 = $0.01 per cut call, prompt free
    assert run.spent_usd == pytest.approx(0.01 * cut)
    assert 0 < run.spent_usd <= run.limit_usd + run.overshoot_usd + 1e-9
    assert run.reserved_usd == pytest.approx(0.0, abs=1e-12)
    assert run.estimated_calls == cut
    assert len(lines) == cut
    assert all(line.estimated and line.output_tokens == 10 for line in lines)
    assert sum(line.cost_usd for line in lines) == pytest.approx(run.spent_usd)
    calls = [e for e in events if e.type == "llm.call"]
    assert len(calls) == cut
    assert all(e.data["estimated"] and e.data["partial"] for e in calls)
    assert len([e for e in events if e.type == "llm.error"]) == 100


async def test_a_cut_before_any_chunk_is_released(server: CutServer) -> None:
    stack = make_stack(server, ["deltas=0&cut=1"])
    run = Budget(1.00)
    async with stack:
        ctx = ToolContext(stack=stack, run_id="r0", budget=BudgetChain((run,)))
        with pytest.raises(MalformedResponseError):
            async for _ in stack.llm.stream("hi", model="cut/deltas=0&cut=1", context=ctx,
                                            max_tokens=50):
                pass
        assert await stack.storage.list_costs("r0") == []
    assert run.spent_usd == 0.0 and run.reserved_usd == pytest.approx(0.0, abs=1e-12)


async def test_a_stream_past_max_tokens_is_stopped_at_its_reservation(
        server: CutServer) -> None:
    model = "deltas=400"  # 800 estimated tokens against max_tokens=50: the server ignores it
    stack = make_stack(server, [model])
    run = Budget(1.00)
    events: list[Event] = []
    async with stack:
        stack.events.subscribe(events.append)
        ctx = ToolContext(stack=stack, run_id="r1", budget=BudgetChain((run,)))
        chunks = [c async for c in stack.llm.stream("hi", model=f"cut/{model}", context=ctx,
                                                    max_tokens=50)]
        [line] = await stack.storage.list_costs("r1")
    text = "".join(c.delta for c in chunks)
    assert chunks[-1].done and chunks[-1].finish_reason == "length"
    # stopped after the chunk that passed 50 tokens: 26 deltas = 52 tokens = $0.052
    assert len(text) == 26 * len(DELTA)
    assert line.estimated and line.output_tokens == 52
    assert line.cost_usd == pytest.approx(0.052)
    assert line.overshoot_usd == pytest.approx(0.002)
    assert run.spent_usd == pytest.approx(0.052)
    assert run.overshoot_usd == pytest.approx(0.002)
    [call] = [e for e in events if e.type == "llm.call"]
    assert call.data["stopped"] == "reservation used up"
    assert call.data["finish_reason"] == "length"


async def test_a_reply_past_max_tokens_records_its_overshoot(server: CutServer) -> None:
    model = "out=500"  # the server bills 500 output tokens whatever max_tokens says
    stack = make_stack(server, [model])
    run = Budget(1.00)
    events: list[Event] = []
    async with stack:
        stack.events.subscribe(events.append)
        ctx = ToolContext(stack=stack, run_id="r2", budget=BudgetChain((run,)))
        response = await stack.llm.chat("hi", model=f"cut/{model}", context=ctx,
                                        max_tokens=50)
        [line] = await stack.storage.list_costs("r2")
    assert response.cost_usd == pytest.approx(0.5)
    assert run.spent_usd == pytest.approx(0.5)  # the real spend, not the $0.05 reserved
    assert run.overshoot_usd == pytest.approx(0.45)
    assert run.snapshot()["overshoot_usd"] == pytest.approx(0.45)
    assert line.overshoot_usd == pytest.approx(0.45) and not line.estimated
    [call] = [e for e in events if e.type == "llm.call"]
    assert call.data["overshoot_usd"] == pytest.approx(0.45)
