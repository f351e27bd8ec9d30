"""Prometheus metrics of flowyard processes: runs, steps, model calls, tokens, cost, rate-limit
waits and circuit breakers, kept in a ``prometheus_client`` :class:`CollectorRegistry` by the
``metrics`` event listener of the built-in plugin (:class:`MetricsListener`).

Every metric, its type and its labels (never a run id or step id: the label sets stay
bounded by the workflows, models and providers a deployment uses; see docs/metrics.md):

* ``flowyard_runs_started_total{workflow}`` counter;
* ``flowyard_runs_total{workflow,status}`` counter, finished runs by status (``completed``,
  ``failed``, ``cancelled``, ...);
* ``flowyard_run_duration_seconds{workflow,status}`` histogram;
* ``flowyard_steps_total{workflow,status}`` counter: ``completed``, ``failed``,
  ``budget_exceeded``, ``cancelled``, ``skipped``, ``resumed`` (completed by an earlier
  attempt of a resumed run);
* ``flowyard_step_duration_seconds{workflow,status}`` histogram (steps that ran);
* ``flowyard_model_calls_total{provider,model,outcome}`` counter, ``outcome`` ``ok`` or
  ``error``;
* ``flowyard_model_call_duration_seconds{provider,model,outcome}`` histogram;
* ``flowyard_model_errors_total{provider,model,error_type}`` counter (the exception class);
* ``flowyard_model_tokens_total{provider,model,kind}`` counter, ``kind`` ``input`` or
  ``output``;
* ``flowyard_model_cost_usd_total{provider,model}`` counter, US dollars;
* ``flowyard_ratelimit_waits_total{key}`` and ``flowyard_ratelimit_wait_seconds_total{key}``
  counters (calls that waited for their model's limiter, and how long; ``key`` is the
  ``provider/model`` reference), ``flowyard_ratelimit_pauses_total{key}`` and
  ``flowyard_ratelimit_pause_seconds_total{key}`` (a 429's retry-after parking the model);
* ``flowyard_budget_exceeded_total{scope}`` counter;
* ``flowyard_circuit_state{provider}`` gauge: 0 closed, 1 half open, 2 open.

Multi-process mode: when ``[metrics] multiprocess_dir`` or the ``PROMETHEUS_MULTIPROC_DIR``
environment variable names a directory, every flowyard process (``flowyard run``, ``flowyard
worker``, ``flowyard serve``) writes its values to files there (``prometheus_client``'s
multiprocess mode) and :func:`render_metrics` aggregates all of them: counters and histograms
are summed across processes, the breaker gauge takes the maximum over live processes. The
directory must be set before the process creates its first metric (:func:`process_metrics`).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as _values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from flowyard.errors import ConfigError
from flowyard.models import Event

__all__ = [
    "CIRCUIT_STATES",
    "LATENCY_BUCKETS",
    "MULTIPROC_ENV",
    "FlowyardMetrics",
    "MetricsListener",
    "configure_multiprocess",
    "mark_process_dead",
    "multiprocess_dir",
    "process_metrics",
    "render_metrics",
]

#: The environment variable of ``prometheus_client``'s multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Histogram buckets of step, run and model-call latency, seconds: from a cached or tiny
#: model's 50 ms to a long agent step's 10 minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
                   600.0, float("inf"))

#: ``flowyard_circuit_state`` values by breaker state.
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class FlowyardMetrics:
    """The metrics of one process, in their own :class:`CollectorRegistry`.

    Args:
        registry: where they are registered (default: a new one; never the global
            ``prometheus_client.REGISTRY``, so a host application's metrics stay its own).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.runs_started = Counter("flowyard_runs_started", "runs started", ["workflow"],
                                    registry=r)
        self.runs = Counter("flowyard_runs", "finished runs by status", ["workflow", "status"],
                            registry=r)
        self.run_duration = Histogram("flowyard_run_duration_seconds", "run wall time, seconds",
                                      ["workflow", "status"], buckets=LATENCY_BUCKETS,
                                      registry=r)
        self.steps = Counter("flowyard_steps", "finished steps by status",
                             ["workflow", "status"], registry=r)
        self.step_duration = Histogram("flowyard_step_duration_seconds",
                                       "step wall time (all attempts), seconds",
                                       ["workflow", "status"], buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.model_calls = Counter("flowyard_model_calls", "model calls by outcome",
                                   ["provider", "model", "outcome"], registry=r)
        self.model_duration = Histogram("flowyard_model_call_duration_seconds",
                                        "model call latency, seconds",
                                        ["provider", "model", "outcome"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.model_errors = Counter("flowyard_model_errors", "failed model calls by error type",
                                    ["provider", "model", "error_type"], registry=r)
        self.tokens = Counter("flowyard_model_tokens", "tokens by model and kind (input/output)",
                              ["provider", "model", "kind"], registry=r)
        self.cost = Counter("flowyard_model_cost_usd", "model cost, US dollars",
                            ["provider", "model"], registry=r)
        self.ratelimit_waits = Counter("flowyard_ratelimit_waits",
                                       "calls that waited for their model's rate limiter",
                                       ["key"], registry=r)
        self.ratelimit_wait_seconds = Counter("flowyard_ratelimit_wait_seconds",
                                              "time spent waiting for rate limiters, seconds",
                                              ["key"], registry=r)
        self.ratelimit_pauses = Counter("flowyard_ratelimit_pauses",
                                        "models paused by a 429's retry-after", ["key"],
                                        registry=r)
        self.ratelimit_pause_seconds = Counter("flowyard_ratelimit_pause_seconds",
                                               "retry-after pauses, seconds", ["key"],
                                               registry=r)
        self.budget_exceeded = Counter("flowyard_budget_exceeded", "calls refused by a budget",
                                       ["scope"], registry=r)
        self.circuit_state = Gauge("flowyard_circuit_state",
                                   "provider circuit breaker: 0 closed, 1 half open, 2 open",
                                   ["provider"], registry=r, multiprocess_mode="livemax")


_PROCESS: FlowyardMetrics | None = None
_PROCESS_DIR: str | None = None


def multiprocess_dir() -> str | None:
    """Return the multiprocess directory in force (``PROMETHEUS_MULTIPROC_DIR``), or None."""
    return os.environ.get(MULTIPROC_ENV) or None


def configure_multiprocess(path: str | os.PathLike[str]) -> str:
    """Switch this process (and the processes it starts, through the environment) to
    multiprocess mode, writing to ``path`` (created when missing).

    Args:
        path: the shared directory of every flowyard process whose metrics are aggregated.

    Returns:
        The directory, as an absolute path.

    Raises:
        ConfigError: this process created its metrics already in another mode or directory.
    """
    target = os.path.abspath(os.fspath(path))
    if _PROCESS is not None and _PROCESS_DIR != target:
        raise ConfigError(f"[metrics] multiprocess_dir {target!r} is set after this process "
                          f"created its metrics (in {_PROCESS_DIR or 'single-process mode'}); "
                          f"set it (or {MULTIPROC_ENV}) before the first stack opens")
    os.makedirs(target, exist_ok=True)
    os.environ[MULTIPROC_ENV] = target
    _values.ValueClass = _values.get_value_class()
    return target


def process_metrics() -> FlowyardMetrics:
    """Return this process's metrics, created on first use (in multiprocess mode when
    ``PROMETHEUS_MULTIPROC_DIR`` is set then).
    """
    global _PROCESS, _PROCESS_DIR
    if _PROCESS is None:
        _PROCESS_DIR = multiprocess_dir()
        if _PROCESS_DIR is not None:
            os.makedirs(_PROCESS_DIR, exist_ok=True)
            _values.ValueClass = _values.get_value_class()
            # a clean exit drops this process's live gauges (breaker states); its counters
            # and histograms stay in the directory, as counters must never go down
            atexit.register(mark_process_dead, os.getpid(), _PROCESS_DIR)
        _PROCESS = FlowyardMetrics()
    return _PROCESS


def render_metrics(metrics: FlowyardMetrics | None = None,
                   extra: Iterable[Any] = ()) -> bytes:
    """Return the metrics in the Prometheus text exposition format (0.0.4).

    Args:
        metrics: whose values (default :func:`process_metrics`). In multiprocess mode the
            values come from the directory's files instead: every process's, this one's
            included.
        extra: more collectors (objects with ``collect()``) rendered with them, like
            flowyard-server's request counters and queue gauges.

    Returns:
        The exposition, UTF-8.
    """
    path = multiprocess_dir()
    if path is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)
    else:
        registry = (metrics or process_metrics()).registry
        if extra:
            merged = CollectorRegistry()
            merged.register(_Forward(registry))
            registry = merged
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


class _Forward:
    """A collector yielding another registry's metrics (so extra collectors never join the
    process registry itself).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Any]:
        """Yield the registry's metric families."""
        return self.registry.collect()


class MetricsListener:
    """The ``metrics`` event listener: turns run, step and model events into
    :class:`FlowyardMetrics` values.

    Remembers each open run's workflow name and its steps' start times (dropped when the run
    finishes) to label steps and time them.

    Args:
        metrics: where the values go (default :func:`process_metrics`).
    """

    def __init__(self, metrics: FlowyardMetrics | None = None) -> None:
        self.metrics = metrics or process_metrics()
        #: run id -> (workflow name, run start time, {step id: start time}); times UNIX s
        self._runs: dict[str, tuple[str, float, dict[str, float]]] = {}
        #: (provider, model) -> the children of :meth:`_model_children`
        self._models: dict[tuple[str, str], tuple[Any, ...]] = {}
        #: (workflow, status) -> the steps counter and duration histogram children
        self._steps: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._handlers: dict[str, Callable[[Event], None]] = {
            "run.started": self._run_started, "run.finished": self._run_finished,
            "step.started": self._step_started, "step.completed": self._step_completed,
            "step.failed": self._step_failed, "step.skipped": self._step_skipped,
            "llm.call": self._llm_call, "llm.error": self._llm_error,
            "ratelimit.wait": self._ratelimit_wait, "ratelimit.paused": self._ratelimit_paused,
            "budget.exceeded": self._budget_exceeded, "circuit.state": self._circuit_state,
        }

    def __call__(self, event: Event) -> None:
        """Count ``event`` when it is one of the measured types."""
        handler = self._handlers.get(event.type)
        if handler is not None:
            handler(event)

    def _workflow(self, run_id: str) -> str:
        run = self._runs.get(run_id)
        return run[0] if run is not None else "unknown"

    def _run_started(self, event: Event) -> None:
        workflow = str(event.data.get("workflow") or "unknown")
        self._runs[event.run_id] = (workflow, event.time, {})
        self.metrics.runs_started.labels(workflow).inc()

    def _run_finished(self, event: Event) -> None:
        run = self._runs.pop(event.run_id, None)
        workflow = run[0] if run is not None else str(event.data.get("workflow_name")
                                                      or "unknown")
        status = str(event.data.get("status") or "unknown")
        self.metrics.runs.labels(workflow, status).inc()
        if run is not None:
            self.metrics.run_duration.labels(workflow, status).observe(
                max(0.0, event.time - run[1]))

    def _step_started(self, event: Event) -> None:
        run = self._runs.get(event.run_id)
        if run is not None and event.step_id is not None:
            run[2][event.step_id] = event.time

    def _step_done(self, event: Event, status: str) -> None:
        run = self._runs.get(event.run_id)
        workflow = run[0] if run is not None else "unknown"
        children = self._steps.get((workflow, status))
        if children is None:  # looked up once per workflow and status
            children = (self.metrics.steps.labels(workflow, status),
                        self.metrics.step_duration.labels(workflow, status))
            self._steps[(workflow, status)] = children
        children[0].inc()
        started = run[2].pop(event.step_id, None) if run is not None and event.step_id else None
        duration = event.data.get("duration_s")
        if not isinstance(duration, (int, float)) and started is not None:
            duration = event.time - started
        if isinstance(duration, (int, float)):
            children[1].observe(max(0.0, duration))

    def _step_completed(self, event: Event) -> None:
        if event.data.get("resumed"):
            self.metrics.steps.labels(self._workflow(event.run_id), "resumed").inc()
            return
        self._step_done(event, "completed")

    def _step_failed(self, event: Event) -> None:
        self._step_done(event, str(event.data.get("status") or "failed"))

    def _step_skipped(self, event: Event) -> None:
        self.metrics.steps.labels(self._workflow(event.run_id), "skipped").inc()

    def _model_children(self, provider: str, model: str) -> tuple[Any, ...]:
        """Return the ``ok`` children of one model (calls, latency, input and output tokens,
        cost), looked up once: ``labels()`` costs more than the increments.
        """
        children = self._models.get((provider, model))
        if children is None:
            m = self.metrics
            children = (m.model_calls.labels(provider, model, "ok"),
                        m.model_duration.labels(provider, model, "ok"),
                        m.tokens.labels(provider, model, "input"),
                        m.tokens.labels(provider, model, "output"),
                        m.cost.labels(provider, model))
            self._models[(provider, model)] = children
        return children

    def _llm_call(self, event: Event) -> None:
        data = event.data
        calls, duration, tokens_in, tokens_out, cost_usd = self._model_children(
            str(data.get("provider", "")), str(data.get("model", "")))
        calls.inc()
        latency = data.get("latency_s")
        if isinstance(latency, (int, float)):
            duration.observe(latency)
        tokens_in.inc(data.get("input_tokens") or 0)
        tokens_out.inc(data.get("output_tokens") or 0)
        cost = data.get("cost_usd")
        if cost:
            cost_usd.inc(cost)

    def _llm_error(self, event: Event) -> None:
        data = event.data
        m = self.metrics
        provider, model = str(data.get("provider", "")), str(data.get("model", ""))
        m.model_calls.labels(provider, model, "error").inc()
        m.model_errors.labels(provider, model, str(data.get("error_type", ""))).inc()
        latency = data.get("latency_s")
        if isinstance(latency, (int, float)):
            m.model_duration.labels(provider, model, "error").observe(latency)

    def _ratelimit_wait(self, event: Event) -> None:
        key = str(event.data.get("key", ""))
        self.metrics.ratelimit_waits.labels(key).inc()
        self.metrics.ratelimit_wait_seconds.labels(key).inc(event.data.get("waited_s") or 0)

    def _ratelimit_paused(self, event: Event) -> None:
        key = str(event.data.get("key", ""))
        self.metrics.ratelimit_pauses.labels(key).inc()
        self.metrics.ratelimit_pause_seconds.labels(key).inc(event.data.get("seconds") or 0)

    def _budget_exceeded(self, event: Event) -> None:
        self.metrics.budget_exceeded.labels(str(event.data.get("scope", ""))).inc()

    def _circuit_state(self, event: Event) -> None:
        new = str(event.data.get("new", ""))
        if new not in CIRCUIT_STATES:
            raise ValueError(f"circuit.state event with an unknown state {new!r}")
        self.metrics.circuit_state.labels(str(event.data.get("provider", ""))).set(
            CIRCUIT_STATES[new])
