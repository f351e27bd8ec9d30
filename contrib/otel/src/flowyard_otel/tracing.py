"""The OpenTelemetry tracer: turns a stack's events into spans.

One trace per run (or the caller's trace: a run whose metadata carries a W3C ``traceparent``,
and a sub-workflow run, which continues its calling step's), with spans

``run <workflow>`` > ``step <id>`` > ``attempt <key> #<n>`` > ``chat <model>`` /
``execute_tool <tool>``

whose start and end times are the events' own. Attributes follow the OpenTelemetry GenAI
semantic conventions (:data:`SEMCONV_VERSION`) plus ``flowyard.*`` ones. Prompt and completion
content is recorded only with ``capture_content`` and then redacted (:func:`redact`).

While an attempt runs, the tracer's outgoing header injector (``flowyard.add_header_injector``)
gives requests sent on its behalf (``flowyard-http``'s providers) the attempt span's
``traceparent``.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import MutableMapping
from typing import Any

import flowyard
from flowyard import current_step
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event as SpanEvent
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["OtelTracer", "SEMCONV_VERSION", "redact"]

log = logging.getLogger("flowyard_otel")

#: The version of the OpenTelemetry semantic conventions (GenAI included) the attributes follow.
SEMCONV_VERSION = "1.37.0"
#: Characters kept of one recorded content value (after redaction).
DEFAULT_CONTENT_MAX_CHARS = 2000

_PROPAGATOR = TraceContextTextMapPropagator()
_REDACTIONS = [
    # key=value / key: value pairs whose key names a secret
    (re.compile(r"(?i)\b(api[_-]?key|token|secret|password|passwd|authorization)"
                r"(\s*[=:]\s*)(?i:(?:bearer|basic)\s+)?(\S+)"), r"\1\2***"),
    (re.compile(r"(?i)\bbearer\s+\S+"), "Bearer ***"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "***"),
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "***@***"),
    # long words mixing letters and digits: keys, tokens, hashes
    (re.compile(r"\b(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{24,}\b"),
     "***"),
]


def redact(text: str, max_chars: int = DEFAULT_CONTENT_MAX_CHARS) -> str:
    """Mask what looks like a secret or a personal identifier in ``text`` and cut it.

    Masked: ``key=value`` pairs whose key names a secret (api_key, token, secret, password,
    authorization), ``Bearer`` credentials, ``sk-`` keys, e-mail addresses, and words of 24 or
    more characters that mix letters and digits (keys, tokens).

    Args:
        text: the text to redact.
        max_chars: characters kept; longer text ends with ``...[cut]``.

    Returns:
        the redacted text.
    """
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    if len(text) > max_chars:
        text = text[:max_chars] + "...[cut]"
    return text


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)


class _Span:
    """A span being recorded: finished into an SDK ``ReadableSpan`` handed to the span
    processor. (Cheaper than the SDK's ``Tracer.start_span``, which samples, cleans every
    attribute and takes locks; every span here is sampled and its times are the events'.)"""

    __slots__ = ("tracer", "name", "context", "parent", "kind", "start_time", "attributes",
                 "events", "status", "ended")

    def __init__(self, tracer: OtelTracer, name: str, parent: SpanContext | None,
                 kind: SpanKind, start_time: int, attributes: dict[str, Any]) -> None:
        self.tracer = tracer
        self.name = name
        trace_id = parent.trace_id if parent is not None else random.getrandbits(128)
        self.context = SpanContext(trace_id, random.getrandbits(64), False, _SAMPLED)
        self.parent = parent
        self.kind = kind
        self.start_time = start_time
        self.attributes = attributes
        self.events: list[SpanEvent] = []
        self.status = _OK
        self.ended = False

    def is_recording(self) -> bool:
        return not self.ended

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_status(self, status: Status) -> None:
        self.status = status

    def add_event(self, name: str, attributes: dict[str, Any], timestamp: int) -> None:
        self.events.append(SpanEvent(name, attributes, timestamp))

    def end(self, end_time: int) -> None:
        if self.ended:
            return
        self.ended = True
        tracer = self.tracer
        tracer.processor.on_end(ReadableSpan(
            name=self.name, context=self.context, parent=self.parent,
            resource=tracer.resource, attributes=self.attributes, events=self.events,
            kind=self.kind, status=self.status, start_time=self.start_time,
            end_time=max(end_time, self.start_time), instrumentation_scope=tracer.scope))


Span = _Span


class _Run:
    __slots__ = ("span", "steps", "attempts", "open")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.steps: dict[str, Span] = {}
        self.attempts: dict[tuple[str, int], Span] = {}
        self.open: dict[str, list[tuple[str, int]]] = {}  # step id -> open attempt keys


class OtelTracer:
    """An event listener that records a stack's runs as OpenTelemetry spans.

    Args:
        processor: the SDK span processor the finished spans go to (the plugin gives a
            ``BatchSpanProcessor`` on the configured exporter; tests a ``SimpleSpanProcessor``
            on an in-memory exporter).
        resource: the spans' resource (default: ``Resource.create()``, which reads
            ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``).
        capture_content: record prompt/completion content (agent turns, run inputs and
            outputs), redacted; off by default.
        content_max_chars: characters kept of one content value.
        inject_headers: register the outgoing header injector (``traceparent`` into
            provider requests).
        shutdown_processor: shut the processor down (flush it) in :meth:`aclose`.
    """

    def __init__(self, processor: SpanProcessor, *, resource: Resource | None = None,
                 capture_content: bool = False,
                 content_max_chars: int = DEFAULT_CONTENT_MAX_CHARS,
                 inject_headers: bool = True, shutdown_processor: bool = True) -> None:
        self.processor = processor
        self.resource = resource if resource is not None else Resource.create()
        self.scope = InstrumentationScope(
            "flowyard_otel", "0.1.0", f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}")
        self.capture_content = capture_content
        self.content_max_chars = content_max_chars
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._shutdown_processor = shutdown_processor
        self._remove_injector = (flowyard.add_header_injector(self.inject)
                                 if inject_headers else None)
        self._handlers = {
            "run.started": self._run_started, "run.finished": self._run_finished,
            "step.started": self._step_started, "step.completed": self._step_completed,
            "step.failed": self._step_failed, "step.skipped": self._step_skipped,
            "step.retrying": self._step_retrying, "llm.call": self._llm_call,
            "llm.error": self._llm_error, "tool.call": self._tool_call,
            "agent.turn": self._agent_turn,
        }

    # ------------------------------------------------------------------ the listener

    def __call__(self, event: flowyard.Event) -> None:
        """Record one event (events of other types, and outside runs, are ignored).

        Args:
            event: the event.
        """
        handler = self._handlers.get(event.type)
        if handler is None or not event.run_id:
            return
        with self._lock:
            handler(event)

    async def aclose(self) -> None:
        """End what is still open, remove the header injector and flush (shut down) the
        span processor.
        """
        import anyio

        if self._remove_injector is not None:
            self._remove_injector()
            self._remove_injector = None
        with self._lock:
            for run in self._runs.values():
                for span in [*run.attempts.values(), *run.steps.values(), run.span]:
                    if span.is_recording():
                        span.set_status(Status(StatusCode.ERROR, "the stack closed"))
                        span.end(_ns(time.time()))
            self._runs.clear()
        if self._shutdown_processor:
            await anyio.to_thread.run_sync(self.processor.shutdown)

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """The outgoing header injector: add the ``traceparent`` of the attempt the current
        task executes (nothing outside a traced attempt).

        Args:
            headers: the request's headers to add to.
        """
        scope = current_step()
        if scope is None:
            return
        with self._lock:
            run = self._runs.get(scope.run_id)
            if run is None:
                return
            span = self._attempt(run, scope.run_id, scope.step_id, scope.step_key,
                                 scope.attempt, time.time())
        headers["traceparent"] = (f"00-{span.context.trace_id:032x}-"
                                  f"{span.context.span_id:016x}-01")

    # ------------------------------------------------------------------ runs and steps

    def _run_started(self, event: flowyard.Event) -> None:
        data = event.data
        parent: SpanContext | None = None  # a new trace unless one is continued
        parent_run = self._runs.get(str(data.get("parent_run_id") or ""))
        if parent_run is not None:
            scope = current_step()
            step = str(data.get("parent_step") or "")
            if scope is not None and scope.run_id == data.get("parent_run_id"):
                parent = self._attempt(parent_run, scope.run_id, scope.step_id,
                                       scope.step_key, scope.attempt, event.time).context
            else:
                parent = (parent_run.steps.get(step) or parent_run.span).context
        elif isinstance(data.get("traceparent"), str):
            found = trace.get_current_span(_PROPAGATOR.extract(
                {"traceparent": data["traceparent"]})).get_span_context()
            if found.is_valid:
                parent = found
            else:
                log.warning("run %s: its traceparent metadata is not a W3C traceparent; "
                            "the run starts a new trace", event.run_id)
        workflow = str(data.get("workflow") or "")
        attributes: dict[str, Any] = {
            "flowyard.run.id": event.run_id, "flowyard.workflow.name": workflow,
            "flowyard.run.resumed": bool(data.get("resumed"))}
        if data.get("parent_run_id"):
            attributes["flowyard.run.parent_id"] = str(data["parent_run_id"])
            attributes["flowyard.run.parent_step"] = str(data.get("parent_step") or "")
        if self.capture_content and data.get("inputs") is not None:
            attributes["flowyard.run.inputs"] = self._content(data["inputs"])
        span = self._start(f"run {workflow}".strip(), parent=parent, attributes=attributes,
                           start_time=_ns(event.time))
        self._runs[event.run_id] = _Run(span)

    def _run_finished(self, event: flowyard.Event) -> None:
        run = self._runs.pop(event.run_id, None)
        if run is None:
            return
        data = event.data
        end = _ns(event.time)
        for span in [*run.attempts.values(), *run.steps.values()]:
            if span.is_recording():
                span.end(end_time=end)
        span = run.span
        status = str(data.get("status") or "")
        span.set_attribute("flowyard.run.status", status)
        for key, name in (("input_tokens", "gen_ai.usage.input_tokens"),
                          ("output_tokens", "gen_ai.usage.output_tokens"),
                          ("cost_usd", "flowyard.cost.usd")):
            if data.get(key) is not None:
                span.set_attribute(name, data[key])
        if self.capture_content and data.get("outputs") is not None:
            span.set_attribute("flowyard.run.outputs", self._content(data["outputs"]))
        if status != "completed":
            self._error(span, "RunFailed", str(data.get("error") or status), end)
        span.end(end_time=end)

    def _step_span(self, run: _Run, event: flowyard.Event, start: float) -> Span:
        step_id = str(event.step_id)
        span = run.steps.get(step_id)
        if span is None:
            span = self._start(f"step {step_id}", parent=run.span.context,
                               start_time=_ns(start), attributes={
                                   "flowyard.run.id": event.run_id,
                                   "flowyard.step.id": step_id})
            run.steps[step_id] = span
        return span

    def _step_started(self, event: flowyard.Event) -> None:
        run = self._runs.get(event.run_id)
        if run is not None and event.step_id:
            span = self._step_span(run, event, event.time)
            if event.data.get("uses"):
                span.set_attribute("flowyard.step.uses", str(event.data["uses"]))

    def _end_attempts(self, run: _Run, step_id: str, end: int, error: tuple[str, str] | None
                      ) -> None:
        keys = run.open.pop(step_id, [])
        for index, key in enumerate(keys):
            span = run.attempts.pop(key)
            if error is not None and index == len(keys) - 1:
                self._error(span, error[0], error[1], end)
            span.end(end_time=end)

    def _step_completed(self, event: flowyard.Event) -> None:
        run = self._runs.get(event.run_id)
        if run is None or not event.step_id:
            return
        span = self._step_span(run, event, event.time)
        del run.steps[event.step_id]  # ended: nothing refers to it any more
        data = event.data
        end = _ns(event.time)
        self._end_attempts(run, event.step_id, end, None)
        span.set_attribute("flowyard.step.status", "completed")
        span.set_attribute("flowyard.step.attempts", int(data.get("attempts") or 0))
        if data.get("resumed"):
            span.set_attribute("flowyard.step.resumed", True)
        if data.get("fallback"):
            span.set_attribute("flowyard.step.fallback", True)
            span.add_event("exception", {
                "exception.type": str(data.get("error_type") or "Error"),
                "exception.message": redact(str(data.get("error") or ""))}, timestamp=end)
        span.end(end_time=end)

    def _step_failed(self, event: flowyard.Event) -> None:
        run = self._runs.get(event.run_id)
        if run is None or not event.step_id:
            return
        span = self._step_span(run, event, event.time)
        del run.steps[event.step_id]  # ended: nothing refers to it any more
        data = event.data
        end = _ns(event.time)
        error = (str(data.get("error_type") or "Error"), str(data.get("error") or ""))
        self._end_attempts(run, event.step_id, end, error)
        span.set_attribute("flowyard.step.status", str(data.get("status") or "failed"))
        span.set_attribute("flowyard.step.attempts", int(data.get("attempts") or 0))
        self._error(span, error[0], error[1], end)
        span.end(end_time=end)

    def _step_skipped(self, event: flowyard.Event) -> None:
        run = self._runs.get(event.run_id)
        if run is None or not event.step_id:
            return
        span = self._step_span(run, event, event.time)
        del run.steps[event.step_id]
        span.set_attribute("flowyard.step.status", "skipped")
        span.set_attribute("flowyard.step.skip_reason", str(event.data.get("reason") or ""))
        span.end(end_time=_ns(event.time))

    # ------------------------------------------------------------------ attempts

    def _attempt(self, run: _Run, run_id: str, step_id: str, key: str, number: int,
                 start: float) -> Span:
        span = run.attempts.get((key, number))
        if span is not None:
            return span
        step = run.steps.get(step_id)
        if step is None:
            step = self._start(f"step {step_id}", parent=run.span.context,
                               start_time=_ns(start), attributes={
                                   "flowyard.run.id": run_id, "flowyard.step.id": step_id})
            run.steps[step_id] = step
        if number == 1 and key == step_id and step.start_time is not None:
            begin = step.start_time  # the first attempt starts with its step
        else:
            begin = _ns(start)
        span = self._start(f"attempt {key} #{number}", parent=step.context, start_time=begin,
                           attributes={"flowyard.run.id": run_id, "flowyard.step.id": step_id,
                                       "flowyard.step.key": key, "flowyard.attempt": number})
        run.attempts[(key, number)] = span
        run.open.setdefault(step_id, []).append((key, number))
        return span

    def _current_attempt(self, run: _Run, event: flowyard.Event, start: float) -> Span:
        """The attempt span a call belongs to: the current task's attempt (the call's event
        is emitted in it), else the step's, else the run's span."""
        scope = current_step()
        if scope is not None and scope.run_id == event.run_id:
            return self._attempt(run, event.run_id, scope.step_id, scope.step_key,
                                 scope.attempt, start)
        if event.step_id and event.step_id in run.steps:
            return run.steps[event.step_id]
        return run.span

    def _step_retrying(self, event: flowyard.Event) -> None:
        run = self._runs.get(event.run_id)
        if run is None or not event.step_id:
            return
        data = event.data
        key = str(data.get("step_key") or event.step_id)
        number = int(data.get("attempt") or 1)
        span = self._attempt(run, event.run_id, event.step_id, key, number, event.time)
        end = _ns(event.time)
        if data.get("wait_s") is not None:
            span.set_attribute("flowyard.retry.wait_s", float(data["wait_s"]))
        self._error(span, str(data.get("error_type") or "Error"), str(data.get("error") or ""),
                    end)
        span.end(end_time=end)
        del run.attempts[(key, number)]
        opened = run.open.get(event.step_id, [])
        if (key, number) in opened:
            opened.remove((key, number))

    # ------------------------------------------------------------------ calls

    def _llm_span(self, event: flowyard.Event) -> Span | None:
        run = self._runs.get(event.run_id)
        if run is None:
            return None
        data = event.data
        latency = float(data.get("latency_s") or 0.0)
        start = event.time - latency
        parent = self._current_attempt(run, event, start)
        provider = str(data.get("provider") or "")
        model = str(data.get("model") or "")
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.system": provider,
            "gen_ai.provider.name": provider, "gen_ai.request.model": model,
            "flowyard.run.id": event.run_id}
        if event.step_id:
            attributes["flowyard.step.id"] = event.step_id
        if data.get("agent"):
            attributes["gen_ai.agent.name"] = str(data["agent"])
        return self._start(f"chat {model}", parent=parent.context, kind=SpanKind.CLIENT,
                           start_time=_ns(start), attributes=attributes)

    def _llm_call(self, event: flowyard.Event) -> None:
        span = self._llm_span(event)
        if span is None:
            return
        data = event.data
        span.set_attribute("gen_ai.response.model",
                           str(data.get("response_model") or data.get("model") or ""))
        span.set_attribute("gen_ai.usage.input_tokens", int(data.get("input_tokens") or 0))
        span.set_attribute("gen_ai.usage.output_tokens", int(data.get("output_tokens") or 0))
        if data.get("cost_usd") is not None:
            span.set_attribute("flowyard.cost.usd", float(data["cost_usd"]))
        if data.get("finish_reason"):
            span.set_attribute("gen_ai.response.finish_reasons", [str(data["finish_reason"])])
        for key in ("estimated", "streamed", "partial"):
            if data.get(key) is not None:
                span.set_attribute(f"flowyard.llm.{key}", bool(data[key]))
        span.end(end_time=_ns(event.time))

    def _llm_error(self, event: flowyard.Event) -> None:
        span = self._llm_span(event)
        if span is None:
            return
        data = event.data
        end = _ns(event.time)
        error_type = str(data.get("error_type") or "Error")
        span.set_attribute("error.type", error_type)
        self._error(span, error_type, str(data.get("error") or ""), end)
        span.end(end_time=end)

    def _tool_call(self, event: flowyard.Event) -> None:
        run = self._runs.get(event.run_id)
        if run is None:
            return
        data = event.data
        start = event.time - float(data.get("duration_s") or 0.0)
        parent = self._current_attempt(run, event, start)
        tool = str(data.get("tool") or "")
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
            "flowyard.run.id": event.run_id,
            "flowyard.tool.idempotent": bool(data.get("idempotent"))}
        if event.step_id:
            attributes["flowyard.step.id"] = event.step_id
        if data.get("agent"):
            attributes["gen_ai.agent.name"] = str(data["agent"])
        span = self._start(f"execute_tool {tool}", parent=parent.context,
                           start_time=_ns(start), attributes=attributes)
        end = _ns(event.time)
        if not data.get("ok", True):
            error = str(data.get("error") or "")
            error_type, _, message = error.partition(": ")
            span.set_attribute("error.type", error_type or "Error")
            self._error(span, error_type or "Error", message, end)
        span.end(end_time=end)

    def _agent_turn(self, event: flowyard.Event) -> None:
        if not self.capture_content:
            return
        run = self._runs.get(event.run_id)
        if run is None:
            return
        span = self._current_attempt(run, event, event.time)
        content = event.data.get("content")
        span.add_event("gen_ai.choice", {
            "gen_ai.agent.name": str(event.data.get("agent") or ""),
            "flowyard.agent.turn": int(event.data.get("turn") or 0),
            "gen_ai.completion": self._content(content if content is not None else "")},
            timestamp=_ns(event.time))

    # ------------------------------------------------------------------ helpers

    def _start(self, name: str, *, parent: SpanContext | None, start_time: int,
               attributes: dict[str, Any], kind: SpanKind = SpanKind.INTERNAL) -> _Span:
        return _Span(self, name, parent, kind, start_time, attributes)

    def _content(self, value: Any) -> str:
        if isinstance(value, str):
            text = value
        else:
            import json

            text = json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)
        return redact(text, self.content_max_chars)

    @staticmethod
    def _error(span: Span, error_type: str, message: str, when: int) -> None:
        clean = redact(message, 500)
        span.set_status(Status(StatusCode.ERROR, f"{error_type}: {clean}"))
        span.add_event("exception", {"exception.type": error_type,
                                     "exception.message": clean}, timestamp=when)

