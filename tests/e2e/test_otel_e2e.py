"""flowyard-otel across distributions (issue 23, item 1): the ``traceparent`` of a step's
attempt arrives in a real HTTP provider request (flowyard-openai on flowyard-http, against an
OpenAI-compatible server on 127.0.0.1), and a task submitted to a real flowyard-server with a
``traceparent`` header and run by its worker is one trace with the caller's.

Cross-distribution (flowyard-otel, flowyard-openai, flowyard-server), so it lives in tests/.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import pytest
from flowyard import Stack
from flowyard_otel.tracing import OtelTracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def _tracer() -> tuple[OtelTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return OtelTracer(SimpleSpanProcessor(exporter)), exporter


class Gateway:
    """An OpenAI-compatible chat server on 127.0.0.1 that records request headers."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                raw = json.dumps({
                    "id": "c1", "object": "chat.completion", "model": "m",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "hi"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1,
                              "total_tokens": 4}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    server = Gateway()
    yield server
    server.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_attempts_traceparent_reaches_the_provider_request(
        gateway: Gateway, flowyard_home: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWYARD_PLUGINS", "builtin,openai")
    stack = Stack.default(config={"storage": {"url": "memory://"}, "openai": {"endpoints": {"gw": {
        "base_url": gateway.base_url, "free": True, "timeout": 5}}}})
    assert "otel.tracer" not in stack.listeners.names()  # no exporter configured: off
    tracer, exporter = _tracer()
    async with stack:
        stack.events.subscribe(tracer)
        workflow = {"name": "ask", "steps": [{"id": "ask", "uses": "llm.chat", "with": {
            "prompt": "hello", "model": "gw/m"}}]}
        result = await stack.run(stack.load_workflow(workflow), {})
        assert result.ok, result.error
        await tracer.aclose()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    attempt = spans["attempt ask #1"]
    [headers] = gateway.headers
    version, trace_id, span_id, _flags = headers["traceparent"].split("-")
    assert version == "00"
    assert trace_id == f"{attempt.context.trace_id:032x}"
    assert span_id == f"{attempt.context.span_id:016x}"
    chat = spans["chat m"]
    assert chat.parent.span_id == attempt.context.span_id
    assert chat.attributes["gen_ai.usage.input_tokens"] == 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


HELLO = """\
name: hello
steps:
  - id: greet
    uses: echo
    with: {value: "Hello"}
  - id: ask
    uses: llm.chat
    with: {model: fake/echo, prompt: "Reply to: ${greet}"}
"""


def test_a_task_through_the_server_and_its_worker_is_one_trace(flowyard_home: Any) -> None:
    import uvicorn
    from flowyard_server.app import create_app
    from flowyard_server.keys import KeyStore
    from flowyard_server.settings import ServerSettings
    from flowyard_server.worker import Worker

    tracer, exporter = _tracer()
    stack = Stack(config={"storage": {"url": "memory://"}, "models": {"default": "fake/echo"}})
    settings = ServerSettings(port=_free_port(), concurrency=1, poll_interval=0.1)

    async def setup() -> str:
        await stack.open()
        stack.events.subscribe(tracer)
        return (await KeyStore(stack.storage).create("a", name="otel"))[0]

    key = anyio.run(setup)
    app = create_app(stack, settings, worker=Worker(stack, settings, name="otel-worker"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port,
                                           log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{settings.port}", timeout=10,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            response = client.post("/v1/workflows", json={"source": HELLO})
            assert response.status_code == 201, response.text
            response = client.post("/v1/tasks", json={"kind": "workflow", "target": "hello"},
                                   headers={"traceparent": f"00-{trace_id}-{parent}-01"})
            assert response.status_code == 201, response.text
            task_id = response.json()["id"]
            while True:
                task = client.get(f"/v1/tasks/{task_id}").json()
                if task["status"] in ("completed", "failed", "cancelled"):
                    break
                assert time.monotonic() < deadline + 20, task
                time.sleep(0.05)
            assert task["status"] == "completed", task
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        anyio.run(tracer.aclose)
        anyio.run(stack.aclose)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    run = spans["run hello"]
    assert f"{run.context.trace_id:032x}" == trace_id
    assert f"{run.parent.span_id:016x}" == parent
    assert run.attributes["flowyard.run.id"] == task["run_id"]
    for name in ("step greet", "step ask", "attempt ask #1", "chat echo"):
        assert f"{spans[name].context.trace_id:032x}" == trace_id, name


@pytest.mark.anyio
async def test_export_over_otlp_grpc_to_a_real_receiver(
        flowyard_home: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc: the spans reach a gRPC OTLP receiver on 127.0.0.1
    (the gRPC exporter is the ``grpc`` extra; installed here)."""
    from concurrent import futures

    import grpc
    from flowyard_otel import plugin
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[Any] = []

    class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        stack = Stack(plugins=[("otel", plugin)], config={"storage": {"url": "memory://"}})
        async with stack:
            result = await stack.run(stack.load_workflow(
                {"name": "grpc", "steps": [{"id": "a", "uses": "echo",
                                            "with": {"value": 1}}]}), {})
            assert result.ok, result.error
    finally:
        server.stop(None)
    names = {span.name for request in received for resource in request.resource_spans
             for scope in resource.scope_spans for span in scope.spans}
    assert {"run grpc", "step a", "attempt a #1"} <= names
