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
import re
import threading
import time
from collections.abc import MutableMapping
from typing import Any

import flowyard
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span, TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
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
        provider: the SDK tracer provider whose span processors export the spans (the plugin
            builds one with a ``BatchSpanProcessor``; tests pass one with an in-memory
            exporter).
        capture_content: record prompt/completion content (agent turns, run inputs and
            outputs), redacted; off by default.
        content_max_chars: characters kept of one content value.
        inject_headers: register the outgoing header injector (``traceparent`` into
            provider requests).
        shutdown_provider: shut the provider down (flush) in :meth:`aclose`.
    """

    def __init__(self, provider: TracerProvider, *, capture_content: bool = False,
                 content_max_chars: int = DEFAULT_CONTENT_MAX_CHARS,
                 inject_headers: bool = True, shutdown_provider: bool = True) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("flowyard_otel", schema_url=(
            f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"))
        self.capture_content = capture_content
        self.content_max_chars = content_max_chars
        self._runs: dict[str, _Run] = {}
        self._lock = threading.RLock()
        self._shutdown_provider = shutdown_provider
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
        provider.
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
                        span.end()
            self._runs.clear()
        if self._shutdown_provider:
            await anyio.to_thread.run_sync(self.provider.shutdown)

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """The outgoing header injector: add the ``traceparent`` of the attempt the current
        task executes (nothing outside a traced attempt).

        Args:
            headers: the request's headers to add to.
        """
        scope = flowyard.current_step()
        if scope is None:
            return
        with self._lock:
            run = self._runs.get(scope.run_id)
            if run is None:
                return
            span = self._attempt(run, scope.run_id, scope.step_id, scope.step_key,
                                 scope.attempt, time.time())
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))

    # ------------------------------------------------------------------ runs and steps

    def _run_started(self, event: flowyard.Event) -> None:
        data = event.data
        parent: Context = Context()  # a new trace unless one is continued
        parent_run = self._runs.get(str(data.get("parent_run_id") or ""))
        if parent_run is not None:
            scope = flowyard.current_step()
            step = str(data.get("parent_step") or "")
            if scope is not None and scope.run_id == data.get("parent_run_id"):
                parent = trace.set_span_in_context(self._attempt(
                    parent_run, scope.run_id, scope.step_id, scope.step_key, scope.attempt,
                    event.time))
            else:
                parent = trace.set_span_in_context(parent_run.steps.get(step)
                                                   or parent_run.span)
        elif isinstance(data.get("traceparent"), str):
            parent = _PROPAGATOR.extract({"traceparent": data["traceparent"]})
        workflow = str(data.get("workflow") or "")
        attributes: dict[str, Any] = {
            "flowyard.run.id": event.run_id, "flowyard.workflow.name": workflow,
            "flowyard.run.resumed": bool(data.get("resumed"))}
        if data.get("parent_run_id"):
            attributes["flowyard.run.parent_id"] = str(data["parent_run_id"])
            attributes["flowyard.run.parent_step"] = str(data.get("parent_step") or "")
        if self.capture_content and data.get("inputs") is not None:
            attributes["flowyard.run.inputs"] = self._content(data["inputs"])
        span = self.tracer.start_span(f"run {workflow}".strip(), context=parent,
                                      kind=SpanKind.INTERNAL, attributes=attributes,
                                      start_time=_ns(event.time))
        self._runs[event.run_id] = _Run(span)  # type: ignore[arg-type]

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
            span = self.tracer.start_span(  # type: ignore[assignment]
                f"step {step_id}", context=trace.set_span_in_context(run.span),
                kind=SpanKind.INTERNAL, start_time=_ns(start),
                attributes={"flowyard.run.id": event.run_id, "flowyard.step.id": step_id})
            run.steps[step_id] = span  # type: ignore[assignment]
        return span  # type: ignore[return-value]

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
            span = run.attempts[key]
            if error is not None and index == len(keys) - 1:
                self._error(span, error[0], error[1], end)
            span.end(end_time=end)

    def _step_completed(self, event: flowyard.Event) -> None:
        run = self._runs.get(event.run_id)
        if run is None or not event.step_id:
            return
        span = self._step_span(run, event, event.time)
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
            step = self.tracer.start_span(  # type: ignore[assignment]
                f"step {step_id}", context=trace.set_span_in_context(run.span),
                start_time=_ns(start),
                attributes={"flowyard.run.id": run_id, "flowyard.step.id": step_id})
            run.steps[step_id] = step  # type: ignore[assignment]
        if number == 1 and key == step_id and step.start_time is not None:
            begin = step.start_time  # the first attempt starts with its step
        else:
            begin = _ns(start)
        span = self.tracer.start_span(  # type: ignore[assignment]
            f"attempt {key} #{number}", context=trace.set_span_in_context(step),
            start_time=begin,
            attributes={"flowyard.run.id": run_id, "flowyard.step.id": step_id,
                        "flowyard.step.key": key, "flowyard.attempt": number})
        run.attempts[(key, number)] = span  # type: ignore[assignment]
        run.open.setdefault(step_id, []).append((key, number))
        return span  # type: ignore[return-value]

    def _current_attempt(self, run: _Run, event: flowyard.Event, start: float) -> Span:
        """The attempt span a call belongs to: the current task's attempt (the call's event
        is emitted in it), else the step's, else the run's span."""
        scope = flowyard.current_step()
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
        return self.tracer.start_span(  # type: ignore[return-value]
            f"chat {model}", context=trace.set_span_in_context(parent), kind=SpanKind.CLIENT,
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
        span = self.tracer.start_span(f"execute_tool {tool}",
                                      context=trace.set_span_in_context(parent),
                                      kind=SpanKind.INTERNAL, start_time=_ns(start),
                                      attributes=attributes)
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

