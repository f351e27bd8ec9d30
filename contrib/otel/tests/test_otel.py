"""flowyard-otel's own tests: spans of real runs asserted with the SDK's in-memory exporter,
the plugin's configuration, and one export to a real OTLP/HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import flowyard
import pytest
from flowyard_otel import plugin
from flowyard_otel.tracing import OtelTracer, redact
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

SECRET = "sk-live0123456789abcdefSECRET"


@flowyard.tool(name="otel.shout")
def shout(text: str) -> dict[str, Any]:
    """Upper-case a text.

    Args:
        text: the text.

    Returns:
        ``{"text": TEXT}``.
    """
    return {"text": text.upper()}


_FLAKY = {"left": 0}


@flowyard.tool(name="otel.flaky")
def flaky(text: str) -> str:
    """Fail while ``_FLAKY["left"]`` is positive (once per call), then echo.

    Args:
        text: the text.

    Returns:
        the text.

    Raises:
        RuntimeError: while failures are left.
    """
    if _FLAKY["left"] > 0:
        _FLAKY["left"] -= 1
        raise RuntimeError(f"flaky failure with api_key={SECRET}")
    return text


_SEEN: list[Any] = []


@flowyard.tool(name="otel.peek")
def peek() -> str:
    """Record the outgoing headers a request of this step would carry (runs in a worker
    thread: a sync tool).

    Returns:
        "ok".
    """
    _SEEN.append(flowyard.outgoing_headers({"X-Own": "1"}))
    return "ok"


class _Tools:
    @flowyard.hookimpl
    def register_tools(self, register: Any, config: Any) -> None:
        register("otel.shout", shout)
        register("otel.flaky", flaky)
        register("otel.peek", peek)


@pytest.fixture(autouse=True)
def _no_failures_left() -> None:
    _FLAKY["left"] = 0


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def _tracer(exporter: InMemorySpanExporter, **kwargs: Any) -> OtelTracer:
    return OtelTracer(SimpleSpanProcessor(exporter), **kwargs)


@pytest.fixture
async def traced(flowyard_home: Any, exporter: InMemorySpanExporter) -> Any:
    stack = flowyard.Stack(plugins=[("otel-test-tools", _Tools())],
                           config={"storage": {"url": "memory://"},
                                   "models": {"default": "fake/echo"}})
    async with stack:
        tracer = _tracer(exporter)
        stack.events.subscribe(tracer, name="otel")
        yield stack, tracer
        await tracer.aclose()


def _by_name(spans: Any) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


WORKFLOW = {
    "name": "pipeline",
    "inputs": {"text": {"type": "string"}},
    "steps": [
        {"id": "up", "uses": "otel.shout", "with": {"text": "${inputs.text}"}},
        {"id": "ask", "uses": "llm.chat", "with": {"prompt": "say ${up.text}"}},
        {"id": "again", "uses": "otel.flaky", "with": {"text": "${ask}"},
         "retry": {"attempts": 3, "backoff": 0.0, "jitter": 0.0, "on": ["any"]}},
    ],
}


@pytest.mark.anyio
async def test_one_trace_per_run_with_steps_attempts_and_calls(
        traced: Any, exporter: InMemorySpanExporter) -> None:
    stack, _ = traced
    _FLAKY["left"] = 1
    result = await stack.run(stack.load_workflow(WORKFLOW), {"text": f"hi {SECRET}"})
    assert result.ok, result.error
    spans = exporter.get_finished_spans()
    named = _by_name(spans)
    run = named["run pipeline"]
    assert run.parent is None
    assert {s.context.trace_id for s in spans} == {run.context.trace_id}
    assert run.attributes["flowyard.run.id"] == result.run_id
    for step in ("up", "ask", "again"):
        span = named[f"step {step}"]
        assert span.parent.span_id == run.context.span_id
        assert span.attributes["flowyard.step.id"] == step
        assert run.start_time <= span.start_time <= span.end_time <= run.end_time
    # attempts under steps; the flaky step's first attempt failed, its second completed
    first, second = named["attempt again #1"], named["attempt again #2"]
    assert first.parent.span_id == named["step again"].context.span_id
    assert second.parent.span_id == named["step again"].context.span_id
    assert first.status.status_code is StatusCode.ERROR
    [exc] = [e for e in first.events if e.name == "exception"]
    assert exc.attributes["exception.type"] == "RuntimeError"
    assert SECRET not in exc.attributes["exception.message"]
    assert "flaky failure" in exc.attributes["exception.message"]
    assert second.status.status_code is StatusCode.UNSET
    assert named["step again"].attributes["flowyard.step.attempts"] == 2
    # model call under the attempt of its step, with GenAI attributes
    chat = named["chat echo"]
    assert chat.parent.span_id == named["attempt ask #1"].context.span_id
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.provider.name"] == "fake"
    assert chat.attributes["gen_ai.system"] == "fake"
    assert chat.attributes["gen_ai.request.model"] == "echo"
    assert chat.attributes["gen_ai.response.model"] == "echo"
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0
    assert chat.attributes["gen_ai.usage.output_tokens"] > 0
    assert chat.attributes["flowyard.cost.usd"] == 0.0
    assert chat.attributes["flowyard.step.id"] == "ask"
    # tool calls under attempts
    tools = [s for s in spans if s.name == "execute_tool otel.shout"]
    assert len(tools) == 1
    assert tools[0].parent.span_id == named["attempt up #1"].context.span_id
    assert tools[0].attributes["gen_ai.tool.name"] == "otel.shout"
    assert tools[0].attributes["gen_ai.operation.name"] == "execute_tool"
    failed_call = [s for s in spans if s.name == "execute_tool otel.flaky"
                   and s.parent.span_id == first.context.span_id]
    assert failed_call and failed_call[0].status.status_code is StatusCode.ERROR
    # no content and no secret anywhere by default
    for span in spans:
        text = repr(dict(span.attributes)) + repr([dict(e.attributes) for e in span.events])
        assert SECRET not in text and "hi " not in text and "HI " not in text
        assert "flowyard.run.inputs" not in span.attributes


@pytest.mark.anyio
async def test_a_failed_step_and_run_are_errors(traced: Any,
                                                exporter: InMemorySpanExporter) -> None:
    stack, _ = traced
    _FLAKY["left"] = 5
    workflow = {"name": "broken", "steps": [
        {"id": "boom", "uses": "otel.flaky", "with": {"text": "x"}}]}
    result = await stack.run(stack.load_workflow(workflow), {})
    assert not result.ok
    named = _by_name(exporter.get_finished_spans())
    for name in ("step boom", "run broken", "attempt boom #1"):
        span = named[name]
        assert span.status.status_code is StatusCode.ERROR, name
        assert SECRET not in (span.status.description or "")
        assert [e for e in span.events if e.name == "exception"], name
    assert named["step boom"].attributes["flowyard.step.status"] == "failed"


@pytest.mark.anyio
async def test_sub_workflow_runs_are_children_of_the_calling_step(
        traced: Any, exporter: InMemorySpanExporter) -> None:
    stack, _ = traced
    workflow = {"name": "parent", "steps": [{"id": "child", "uses": "workflow", "with": {
        "inputs": {"text": "a"},
        "workflow": {"name": "inner", "inputs": {"text": {"type": "string"}}, "steps": [
            {"id": "s", "uses": "otel.shout", "with": {"text": "${inputs.text}"}}]}}}]}
    result = await stack.run(stack.load_workflow(workflow), {})
    assert result.ok, result.error
    named = _by_name(exporter.get_finished_spans())
    inner, outer = named["run inner"], named["run parent"]
    assert inner.context.trace_id == outer.context.trace_id
    assert inner.parent.span_id == named["attempt child #1"].context.span_id
    assert named["step s"].parent.span_id == inner.context.span_id


@pytest.mark.anyio
async def test_a_runs_traceparent_metadata_is_continued(
        traced: Any, exporter: InMemorySpanExporter) -> None:
    stack, _ = traced
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    result = await stack.run(stack.load_workflow(WORKFLOW), {"text": "x"},
                             metadata={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert result.ok, result.error
    run = _by_name(exporter.get_finished_spans())["run pipeline"]
    assert f"{run.context.trace_id:032x}" == trace_id
    assert f"{run.parent.span_id:016x}" == parent_id


@pytest.mark.anyio
async def test_content_is_recorded_redacted_only_when_asked(
        flowyard_home: Any, exporter: InMemorySpanExporter) -> None:
    stack = flowyard.Stack(plugins=[("otel-test-tools", _Tools())],
                           config={"storage": {"url": "memory://"}})
    async with stack:
        tracer = _tracer(exporter, capture_content=True)
        stack.events.subscribe(tracer)
        workflow = {"name": "c", "inputs": {"text": {"type": "string"}}, "steps": [
            {"id": "up", "uses": "otel.shout", "with": {"text": "${inputs.text}"}}],
            "outputs": {"out": "${up.text}"}}
        result = await stack.run(stack.load_workflow(workflow),
                                 {"text": f"hello token={SECRET} mail bob@example.com"})
        assert result.ok
        await tracer.aclose()
    run = _by_name(exporter.get_finished_spans())["run c"]
    inputs = run.attributes["flowyard.run.inputs"]
    assert "hello" in inputs and SECRET not in inputs and "bob@example.com" not in inputs
    assert "HELLO" in run.attributes["flowyard.run.outputs"]
    assert SECRET.upper() not in run.attributes["flowyard.run.outputs"]


def test_redact_masks_secrets_and_cuts() -> None:
    assert redact(f"use {SECRET} now") == "use *** now"
    assert redact("Authorization: Bearer abc.def") == "Authorization: ***"
    assert redact("password=hunter2 ok") == "password=*** ok"
    assert redact("x" * 50, max_chars=10) == "x" * 10 + "...[cut]"
    assert redact("plain words stay") == "plain words stay"


@pytest.mark.anyio
async def test_the_header_injector_gives_the_attempts_traceparent(
        traced: Any, exporter: InMemorySpanExporter) -> None:
    stack, _ = traced
    _SEEN.clear()
    result = await stack.run(stack.load_workflow(
        {"name": "p", "steps": [{"id": "peek", "uses": "otel.peek"}]}), {})
    assert result.ok, result.error
    [headers] = _SEEN
    attempt = _by_name(exporter.get_finished_spans())["attempt peek #1"]
    ctx = attempt.context
    assert set(headers) == {"X-Own", "traceparent"} and headers["X-Own"] == "1"
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert int(flags, 16) & 1  # sampled
    assert flowyard.outgoing_headers(None) is None  # outside a step: nothing added


def test_settings_follow_the_standard_variables() -> None:
    config = flowyard.Config({})
    assert plugin.settings(config, {})["enabled"] is False
    found = plugin.settings(config, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
                                     "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert found["enabled"] and found["protocol"] == "grpc" and found["exporter"] == "otlp"
    assert not plugin.settings(config, {"OTEL_EXPORTER_OTLP_ENDPOINT": "x",
                                        "OTEL_SDK_DISABLED": "true"})["enabled"]
    on = flowyard.Config({"otel": {"enabled": True, "capture_content": True}})
    assert plugin.settings(on, {})["capture_content"] is True
    with pytest.raises(flowyard.ConfigError):
        plugin.settings(flowyard.Config({"otel": {"exporter": "zipkin"}}), {})
    with pytest.raises(flowyard.ConfigError):
        plugin.settings(config, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


# ------------------------------------------------------------------ a real OTLP/HTTP receiver


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Any]]]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    received: list[Any] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            received.append((self.path, self.headers.get("Content-Type"), request))
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.anyio
async def test_export_to_a_real_otlp_http_receiver(
        flowyard_home: Any, receiver: tuple[str, list[Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, received = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "otel-test")

    stack = flowyard.Stack(plugins=[("otel", plugin), ("otel-test-tools", _Tools())],
                           config={"storage": {"url": "memory://"}})
    async with stack:
        assert "otel.tracer" in stack.listeners.names()
        result = await stack.run(stack.load_workflow(
            {"name": "exported", "steps": [
                {"id": "a", "uses": "otel.shout", "with": {"text": "x"}}]}), {})
        assert result.ok
    # the stack's close flushed the batch processor
    assert received
    path, content_type, _ = received[0]
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    spans = [(span, resource)
             for _, _, request in received for resource in request.resource_spans
             for scope in resource.scope_spans for span in scope.spans]
    names = {span.name for span, _ in spans}
    assert {"run exported", "step a", "attempt a #1", "execute_tool otel.shout"} <= names
    [resource] = {id(r): r for _, r in spans}.values()
    service = [a.value.string_value for a in resource.resource.attributes
               if a.key == "service.name"]
    assert service == ["otel-test"]
    run = next(span for span, _ in spans if span.name == "run exported")
    attributes = {a.key: a.value.string_value for a in run.attributes}
    assert attributes["flowyard.run.id"] == result.run_id
    assert len({span.trace_id for span, _ in spans}) == 1
