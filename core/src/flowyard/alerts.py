"""Alerts: rules of ``[[alerts.rules]]`` evaluated over a window of the stack's events,
emitted as ``alert.firing`` / ``alert.resolved`` events and delivered through channels.

The :class:`AlertManager` is an event listener (registered as ``alerts`` by the built-in
plugin when ``[alerts]`` has rules): it keeps its own windowed samples of ``run.started``,
``run.finished``, ``step.completed``/``step.failed``, ``llm.call``, ``budget.exceeded`` and
``circuit.state`` events (independent of the Prometheus metrics module), and evaluates every
rule each ``[alerts] interval_s`` seconds in a background task of the process that runs the
workflows (started by the first event, stopped by ``Stack.aclose``). ``queue_age_s`` reads the
storage's task queue (:class:`~flowyard.interfaces.SupportsTaskQueue`) at evaluation.

A rule fires once its condition (``value >= threshold``) has held ``for_s`` seconds; a firing
alert is delivered once (again every ``repeat_interval_s`` when set) and a recovery notice is
delivered when it resolves. Channels are built from ``[alerts.channels.<name>]`` tables by the
factories of the ``register_alert_channels`` hook family (``log``, ``webhook``, ``email`` are
built in). Times come from an injectable :class:`~flowyard.clock.Clock`. See ``docs/alerts.md``.
"""

from __future__ import annotations

import json
import logging
import math
import smtplib
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio
import attrs
import tenacity

from flowyard.clock import Clock, MonotonicClock
from flowyard.errors import ConfigError, FlowyardError
from flowyard.interfaces import SupportsTaskQueue, TaskQuery

if TYPE_CHECKING:
    from flowyard.interfaces import Services
    from flowyard.models import Event

__all__ = ["METRICS", "AlertRule", "AlertNotice", "AlertChannel", "AlertManager",
           "parse_rules", "LogChannel", "WebhookChannel", "EmailChannel", "DeliveryError"]

log = logging.getLogger("flowyard.alerts")

#: The metrics a rule can watch (see docs/alerts.md for each one's unit and source).
METRICS = ("error_rate", "cost_usd_per_hour", "cost_usd_per_run", "p95_latency_s",
           "budget_used_ratio", "queue_age_s", "breaker_open")
_FILTER_KEYS = ("workflow", "model", "provider")
_SEVERITIES = ("info", "warning", "critical")


class DeliveryError(FlowyardError):
    """A channel could not deliver a notice (after its retries)."""


@attrs.frozen
class AlertRule:
    """One ``[[alerts.rules]]`` entry.

    Args:
        name: unique rule name.
        metric: one of :data:`METRICS`.
        threshold: the rule's condition is ``value >= threshold`` (metric's unit).
        window_s: seconds of events the value is computed over (default 300).
        for_s: seconds the condition must hold before the alert fires (default 0).
        severity: ``info``, ``warning`` (default) or ``critical``.
        channels: channel names (``[alerts.channels.<name>]``) the notices go to.
        labels: static labels added to the notices.
        filter: keep samples whose ``workflow``/``model``/``provider`` equal these.
        scope: for ``error_rate``: ``"runs"`` (default) or ``"steps"``.
        budget_usd: for ``budget_used_ratio``: the budget the window's cost is compared to.
        tenant: for ``queue_age_s``: whose queue (default ``"default"``).
        min_samples: fewest samples for a value (error_rate, p95; default 1).
        repeat_interval_s: re-send a still-firing alert this often (None: once).
    """

    name: str
    metric: str
    threshold: float
    window_s: float = 300.0
    for_s: float = 0.0
    severity: str = "warning"
    channels: tuple[str, ...] = ()
    labels: Mapping[str, str] = attrs.field(factory=dict)
    filter: Mapping[str, str] = attrs.field(factory=dict)
    scope: str = "runs"
    budget_usd: float | None = None
    tenant: str = "default"
    min_samples: int = 1
    repeat_interval_s: float | None = None


@attrs.frozen
class AlertNotice:
    """What a channel delivers.

    Args:
        state: ``"firing"`` or ``"resolved"``.
        rule: the rule's name; metric: its metric; severity: its severity.
        value: the metric's value at evaluation (None when there was no data).
        threshold: the rule's threshold.
        labels: the rule's labels and filter.
        since: UNIX time the alert started firing; at: UNIX time of this notice.
        repeat: True for a repeated firing notice.
    """

    state: str
    rule: str
    metric: str
    severity: str
    value: float | None
    threshold: float
    labels: Mapping[str, str]
    since: float
    at: float
    repeat: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the notice as JSON-ready builtins (the webhook's body)."""
        data = attrs.asdict(self)
        data["labels"] = dict(self.labels)
        return data

    def summary(self) -> str:
        """One line: ``[FIRING] rule: metric=value >= threshold (labels)``."""
        value = "no data" if self.value is None else f"{self.value:.6g}"
        labels = ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return (f"[{self.state.upper()}] {self.rule} ({self.severity}): {self.metric}={value}"
                f" threshold {self.threshold:g}" + (f" ({labels})" if labels else ""))


@runtime_checkable
class AlertChannel(Protocol):
    """Delivers alert notices (built by a ``register_alert_channels`` factory)."""

    async def send(self, notice: AlertNotice) -> None:
        """Deliver ``notice``.

        Raises:
            DeliveryError: it could not be delivered.
        """
        ...


# ---------------------------------------------------------------- configuration


def _number(rule: str, key: str, value: Any, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"[[alerts.rules]] {rule!r}: {key} must be a number >= {minimum:g}, "
                          f"got {value!r}")
    return float(value)


def parse_rules(raw: Any) -> list[AlertRule]:
    """Parse ``[[alerts.rules]]``.

    Args:
        raw: the list of rule tables (None: no rules).

    Returns:
        the rules, in order.

    Raises:
        ConfigError: a rule is not a table, lacks ``name``/``metric``/``threshold``, names an
            unknown metric, key, filter or severity, has a negative number, or a name twice.
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"[[alerts.rules]] must be a list of tables, got {type(raw).__name__}")
    known = {f.name for f in attrs.fields(AlertRule)}
    rules: list[AlertRule] = []
    for index, table in enumerate(raw):
        if not isinstance(table, Mapping):
            raise ConfigError(f"[[alerts.rules]] #{index + 1} must be a table")
        name = table.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"[[alerts.rules]] #{index + 1} needs a name")
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"[[alerts.rules]] {name!r}: unknown keys {', '.join(unknown)}")
        metric = table.get("metric")
        if metric not in METRICS:
            raise ConfigError(f"[[alerts.rules]] {name!r}: metric must be one of "
                              f"{', '.join(METRICS)}, got {metric!r}")
        if "threshold" not in table:
            raise ConfigError(f"[[alerts.rules]] {name!r} needs a threshold")
        severity = table.get("severity", "warning")
        if severity not in _SEVERITIES:
            raise ConfigError(f"[[alerts.rules]] {name!r}: severity must be one of "
                              f"{', '.join(_SEVERITIES)}, got {severity!r}")
        filt = dict(table.get("filter") or {})
        bad = sorted(set(filt) - set(_FILTER_KEYS))
        if bad:
            raise ConfigError(f"[[alerts.rules]] {name!r}: filter keys must be among "
                              f"{', '.join(_FILTER_KEYS)}, got {', '.join(bad)}")
        scope = table.get("scope", "runs")
        if scope not in ("runs", "steps"):
            raise ConfigError(f"[[alerts.rules]] {name!r}: scope must be runs or steps")
        budget = table.get("budget_usd")
        if metric == "budget_used_ratio" and budget is None:
            raise ConfigError(f"[[alerts.rules]] {name!r}: budget_used_ratio needs budget_usd")
        repeat = table.get("repeat_interval_s")
        channels = table.get("channels", ["log"])
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ConfigError(f"[[alerts.rules]] {name!r}: channels must be a list of names")
        rules.append(AlertRule(
            name=name, metric=metric,
            threshold=_number(name, "threshold", table["threshold"], minimum=-math.inf),
            window_s=_number(name, "window_s", table.get("window_s", 300.0), minimum=1e-9),
            for_s=_number(name, "for_s", table.get("for_s", 0.0)),
            severity=severity, channels=tuple(channels),
            labels={str(k): str(v) for k, v in dict(table.get("labels") or {}).items()},
            filter={str(k): str(v) for k, v in filt.items()}, scope=scope,
            budget_usd=None if budget is None else _number(name, "budget_usd", budget,
                                                            minimum=1e-12),
            tenant=str(table.get("tenant", "default")),
            min_samples=int(_number(name, "min_samples", table.get("min_samples", 1))),
            repeat_interval_s=None if repeat is None else _number(name, "repeat_interval_s",
                                                                  repeat, minimum=1e-9),
        ))
    names = [r.name for r in rules]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"[[alerts.rules]]: names used twice: {', '.join(twice)}")
    return rules


# ---------------------------------------------------------------- the windowed view


@attrs.define
class _Sample:
    at: float  # clock time it was seen
    kind: str  # "run", "step", "call", "budget"
    labels: dict[str, str]
    value: float  # run/step: 1 failed, 0 ok; call: cost; budget: 1
    extra: float = 0.0  # call: latency_s; run: cost_usd


@attrs.define
class _State:
    pending_since: float | None = None  # clock time the condition started holding
    firing: bool = False
    since_wall: float = 0.0
    last_sent: float = 0.0
    value: float | None = None


class AlertManager:
    """The ``alerts`` event listener: a windowed view of the events and the rule evaluation.

    ``__call__`` (the engine's hot path) only appends a sample and, the first time an event
    loop runs it, starts the background evaluation task. :meth:`evaluate` computes every
    rule's value, moves the rules between ok, pending and firing, emits ``alert.firing`` /
    ``alert.resolved`` ({rule, metric, value, threshold, labels, severity}) and delivers the
    notices (a failed delivery is logged and emitted as ``alert.delivery_failed`` {rule,
    channel, error}). :meth:`aclose` stops the background task.

    Args:
        services: the stack (its events, storage and ``alert_channels`` registry).
        rules: the rules.
        channels: ``[alerts.channels]`` (``name -> table`` with ``type`` and the options);
            ``log`` is always available.
        interval_s: seconds between evaluations (``[alerts] interval_s``, default 15).
        clock: time source of the windows, ``for_s`` and the evaluation loop (default real).
        wall: UNIX time source for notices and the queue's ``created_at`` (default
            ``time.time``).

    Raises:
        ConfigError: a rule names an unknown channel, a channel an unknown type, or
            ``interval_s`` is not > 0.
    """

    def __init__(self, services: Services, rules: list[AlertRule], *,
                 channels: Mapping[str, Mapping[str, Any]] | None = None,
                 interval_s: float = 15.0, clock: Clock | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        if not interval_s > 0:
            raise ConfigError(f"[alerts] interval_s must be > 0, got {interval_s!r}")
        self.services = services
        self.rules = rules
        self.interval_s = interval_s
        self.clock: Clock = clock or MonotonicClock()
        self.wall = wall
        self._channel_config = {"log": {"type": "log"}, **dict(channels or {})}
        for rule in rules:
            for name in rule.channels:
                if name not in self._channel_config:
                    raise ConfigError(f"[[alerts.rules]] {rule.name!r}: no channel {name!r} "
                                      "(add an [alerts.channels.<name>] table)")
        for name, table in self._channel_config.items():
            kind = table.get("type")
            if kind not in services.alert_channels:
                raise ConfigError(f"[alerts.channels.{name}]: unknown type {kind!r} (known: "
                                  f"{', '.join(services.alert_channels.names())})")
        self._channels: dict[str, AlertChannel] = {}
        self._horizon = max((r.window_s for r in rules), default=0.0)
        self._samples: deque[_Sample] = deque()
        self._workflows: dict[str, str] = {}  # run_id -> workflow
        self._breakers: dict[str, str] = {}  # provider -> state
        self._states = {r.name: _State() for r in rules}
        self._started = False
        self._closed = False
        self._scope: anyio.CancelScope | None = None
        self._tasks: set[Any] = set()
        #: notices delivered so far, per channel name (for tests and `flowyard doctor`)
        self.delivered: dict[str, int] = {}

    # -- the hot path

    def __call__(self, event: Event) -> None:
        """Record the sample ``event`` carries (when any) and start the evaluation loop."""
        kind = event.type
        data = event.data
        if kind == "run.started":
            if len(self._workflows) >= 10_000:
                self._workflows.clear()
            self._workflows[event.run_id] = str(data.get("workflow", ""))
        elif kind == "run.finished":
            self._add("run", event, 0.0 if data.get("status") == "completed" else 1.0,
                      float(data.get("cost_usd") or 0.0))
            self._workflows.pop(event.run_id, None)
        elif kind == "step.completed":
            self._add("step", event, 0.0)
        elif kind == "step.failed":
            self._add("step", event, 1.0)
        elif kind == "llm.call":
            self._add("call", event, float(data.get("cost_usd") or 0.0),
                      float(data.get("latency_s") or 0.0))
        elif kind == "budget.exceeded":
            self._add("budget", event, 1.0)
        elif kind == "circuit.state":
            self._breakers[str(data.get("provider", ""))] = str(data.get("new", ""))
        else:
            return
        if not self._started and not self._closed:
            self._start()

    def _add(self, kind: str, event: Event, value: float, extra: float = 0.0) -> None:
        now = self.clock.now()
        data = event.data
        labels = {"workflow": self._workflows.get(event.run_id, "")}
        if data.get("model") is not None:
            model = str(data["model"])
            labels["model"] = model if "/" in model or data.get("provider") is None \
                else f"{data['provider']}/{model}"
        if data.get("provider") is not None:
            labels["provider"] = str(data["provider"])
        self._samples.append(_Sample(now, kind, labels, value, extra))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0].at < now - self._horizon:
            self._samples.popleft()

    # -- the background loop

    def _start(self) -> None:
        import sniffio  # lazy: only when an event arrives

        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            return  # no event loop yet: the next event starts it
        self._started = True
        if library == "trio":
            import trio  # lazy: trio only when it runs the loop

            trio.lowlevel.spawn_system_task(self._loop)
            return
        import asyncio  # lazy: asyncio only when it runs the loop

        task = asyncio.get_running_loop().create_task(self._loop())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _loop(self) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            while not self._closed:
                await self.clock.sleep(self.interval_s)
                try:
                    await self.evaluate()
                except Exception:
                    log.exception("alert evaluation failed; retrying in %gs", self.interval_s)

    async def aclose(self) -> None:
        """Stop the evaluation loop (``Stack.aclose`` calls this)."""
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()

    # -- evaluation

    def _matching(self, rule: AlertRule, kind: str, now: float) -> list[_Sample]:
        start = now - rule.window_s
        return [s for s in self._samples if s.kind == kind and s.at >= start
                and all(s.labels.get(k) == v for k, v in rule.filter.items())]

    async def value(self, rule: AlertRule) -> float | None:
        """Compute ``rule``'s metric now.

        Args:
            rule: the rule.

        Returns:
            the value in the metric's unit (``error_rate`` and ``budget_used_ratio`` 0..1+,
            costs in USD, latency and age in seconds, ``breaker_open`` the count of open
            breakers), or None when there is no data (too few samples; no task queue).
        """
        now = self.clock.now()
        self._trim(now)
        metric = rule.metric
        if metric == "error_rate":
            samples = self._matching(rule, "run" if rule.scope == "runs" else "step", now)
            if len(samples) < max(rule.min_samples, 1):
                return None
            return sum(s.value for s in samples) / len(samples)
        if metric == "cost_usd_per_hour":
            cost = sum(s.value for s in self._matching(rule, "call", now))
            return cost * 3600.0 / rule.window_s
        if metric == "cost_usd_per_run":
            runs = self._matching(rule, "run", now)
            return max((s.extra for s in runs), default=None)
        if metric == "p95_latency_s":
            latencies = sorted(s.extra for s in self._matching(rule, "call", now))
            if len(latencies) < max(rule.min_samples, 1):
                return None
            return latencies[max(math.ceil(0.95 * len(latencies)) - 1, 0)]  # nearest rank
        if metric == "budget_used_ratio":
            assert rule.budget_usd is not None  # checked by parse_rules
            ratio = sum(s.value for s in self._matching(rule, "call", now)) / rule.budget_usd
            if self._matching(rule, "budget", now):
                ratio = max(ratio, 1.0)  # a call was refused: the budget is used up
            return ratio
        if metric == "breaker_open":
            wanted = rule.filter.get("provider")
            return float(sum(1 for p, s in self._breakers.items()
                             if s == "open" and (wanted is None or p == wanted)))
        return await self._queue_age(rule)

    async def _queue_age(self, rule: AlertRule) -> float | None:
        if not self.services.storage_is_open:
            return None
        storage = self.services.storage
        if not isinstance(storage, SupportsTaskQueue):
            return None
        query = TaskQuery(tenant=rule.tenant, status="queued", limit=1000,
                          target=rule.filter.get("workflow"))
        tasks = await storage.list_tasks(query)
        if not tasks:
            return 0.0
        return max(self.wall() - min(t.created_at for t in tasks), 0.0)

    async def evaluate(self) -> list[AlertNotice]:
        """Evaluate every rule once, emit the alert events and deliver the notices.

        Returns:
            the notices sent by this evaluation (firing, repeated or resolved).
        """
        now = self.clock.now()
        notices: list[tuple[AlertRule, AlertNotice]] = []
        for rule in self.rules:
            state = self._states[rule.name]
            value = await self.value(rule)
            state.value = value
            holds = value is not None and value >= rule.threshold
            if holds:
                if state.pending_since is None:
                    state.pending_since = now
                if not state.firing and now - state.pending_since >= rule.for_s:
                    state.firing = True
                    state.since_wall = self.wall()
                    state.last_sent = now
                    notices.append((rule, self._notice(rule, "firing", value, state)))
                elif (state.firing and rule.repeat_interval_s is not None
                      and now - state.last_sent >= rule.repeat_interval_s):
                    state.last_sent = now
                    notices.append((rule, self._notice(rule, "firing", value, state,
                                                       repeat=True)))
            else:
                state.pending_since = None
                if state.firing:
                    state.firing = False
                    notices.append((rule, self._notice(rule, "resolved", value, state)))
        for rule, notice in notices:
            if not notice.repeat:
                self.services.events.make(
                    f"alert.{notice.state}", rule=rule.name, metric=rule.metric,
                    value=notice.value, threshold=rule.threshold, labels=dict(notice.labels),
                    severity=rule.severity)
            await self._deliver(rule, notice)
        return [n for _, n in notices]

    def _notice(self, rule: AlertRule, state_name: str, value: float | None, state: _State,
                *, repeat: bool = False) -> AlertNotice:
        return AlertNotice(state=state_name, rule=rule.name, metric=rule.metric,
                           severity=rule.severity, value=value, threshold=rule.threshold,
                           labels={**rule.filter, **rule.labels}, since=state.since_wall,
                           at=self.wall(), repeat=repeat)

    def firing(self) -> list[str]:
        """Return the names of the rules firing now."""
        return [name for name, state in self._states.items() if state.firing]

    def _channel(self, name: str) -> AlertChannel:
        channel = self._channels.get(name)
        if channel is None:
            table = dict(self._channel_config[name])
            factory = self.services.alert_channels.get(str(table.pop("type")))
            channel = factory(name, table)
            self._channels[name] = channel
        return channel

    async def _deliver(self, rule: AlertRule, notice: AlertNotice) -> None:
        for name in rule.channels:
            try:
                await self._channel(name).send(notice)
            except (DeliveryError, ConfigError, OSError) as exc:
                log.error("alert %s: channel %s could not deliver the %s notice: %s",
                          rule.name, name, notice.state, exc)
                self.services.events.make("alert.delivery_failed", rule=rule.name,
                                          channel=name, error=str(exc))
                continue
            self.delivered[name] = self.delivered.get(name, 0) + 1


# ---------------------------------------------------------------- first-party channels


class LogChannel:
    """Writes notices to the ``flowyard.alerts`` logger (firing: WARNING, or ERROR when
    critical; resolved: INFO).

    Args:
        name: the channel's name.
        options: ``level``: a logging level name for firing notices (default by severity).

    Raises:
        ConfigError: ``level`` is not a logging level name.
    """

    def __init__(self, name: str = "log", options: Mapping[str, Any] | None = None) -> None:
        self.name = name
        level = (options or {}).get("level")
        self.level: int | None = None
        if level is not None:
            number = logging.getLevelName(str(level).upper())
            if not isinstance(number, int):
                raise ConfigError(f"[alerts.channels.{name}] level must be a logging level "
                                  f"name (WARNING, ERROR, ...), got {level!r}")
            self.level = number

    async def send(self, notice: AlertNotice) -> None:
        """Log ``notice``."""
        if notice.state == "resolved":
            level = logging.INFO
        elif self.level is not None:
            level = self.level
        else:
            level = logging.ERROR if notice.severity == "critical" else logging.WARNING
        log.log(level, "%s", notice.summary())


class WebhookChannel:
    """POSTs each notice as JSON (:meth:`AlertNotice.to_dict`) to a URL, retrying with
    exponential backoff (tenacity) on connection errors, timeouts and 5xx/429 answers.

    Options (``[alerts.channels.<name>]``): ``url`` (required), ``headers`` (a table),
    ``timeout_s`` (per attempt, default 5), ``attempts`` (default 4), ``backoff_s`` (first
    wait, doubled each retry, default 0.5; at most ``backoff_max_s``, default 10).

    Args:
        name: the channel's name.
        options: the options above.

    Raises:
        ConfigError: no ``url``, or one that is not http(s).
    """

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        url = options.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"[alerts.channels.{name}] needs an http(s) url, got {url!r}")
        self.name = name
        self.url = url
        self.headers = {str(k): str(v) for k, v in dict(options.get("headers") or {}).items()}
        self.timeout_s = float(options.get("timeout_s", 5.0))
        self.attempts = int(options.get("attempts", 4))
        self.backoff_s = float(options.get("backoff_s", 0.5))
        self.backoff_max_s = float(options.get("backoff_max_s", 10.0))
        #: attempts made by the last send (for tests)
        self.last_attempts = 0

    def _post(self, body: bytes) -> None:
        self.last_attempts += 1
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "flowyard-alerts",
            **self.headers})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise _Retry(f"HTTP {exc.code}") from exc
            raise DeliveryError(f"webhook {self.url} answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc

    async def send(self, notice: AlertNotice) -> None:
        """POST ``notice``.

        Raises:
            DeliveryError: a 4xx answer (no retry), or every attempt failed.
        """
        body = json.dumps(notice.to_dict()).encode()
        self.last_attempts = 0
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential(multiplier=self.backoff_s, max=self.backoff_max_s),
            retry=tenacity.retry_if_exception_type(_Retry), reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    await anyio.to_thread.run_sync(self._post, body)
        except _Retry as exc:
            raise DeliveryError(f"webhook {self.url}: {self.attempts} attempt(s) failed, "
                                f"last: {exc}") from exc


class _Retry(Exception):
    """A webhook attempt failed in a way worth retrying."""


class EmailChannel:
    """Sends each notice as a plain-text email over SMTP (``smtplib``, in a worker thread).

    Options: ``host`` (default ``localhost``), ``port`` (default 25), ``from`` (required),
    ``to`` (required: a list of addresses), ``starttls`` (default false), ``username`` and
    ``password_env`` (the name of an environment variable holding the password: never the
    password itself), ``timeout_s`` (default 10).

    Args:
        name: the channel's name.
        options: the options above.

    Raises:
        ConfigError: no ``from`` or ``to``.
    """

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        sender = options.get("from")
        to = options.get("to")
        if not isinstance(sender, str) or not sender:
            raise ConfigError(f"[alerts.channels.{name}] needs from = \"address\"")
        if isinstance(to, str):
            to = [to]
        if not isinstance(to, list) or not to:
            raise ConfigError(f"[alerts.channels.{name}] needs to = [\"address\", ...]")
        self.name = name
        self.host = str(options.get("host", "localhost"))
        self.port = int(options.get("port", 25))
        self.sender = sender
        self.to = [str(t) for t in to]
        self.starttls = bool(options.get("starttls", False))
        self.username = options.get("username")
        self.password_env = options.get("password_env")
        self.timeout_s = float(options.get("timeout_s", 10.0))

    def _message(self, notice: AlertNotice) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = f"[flowyard] {notice.state.upper()}: {notice.rule}"
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message.set_content(notice.summary() + "\n\n" + json.dumps(notice.to_dict(), indent=2))
        return message

    def _send(self, message: EmailMessage) -> None:
        import os  # lazy: only for the password variable

        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                password = os.environ.get(str(self.password_env or ""))
                if password is None:
                    raise DeliveryError(f"[alerts.channels.{self.name}]: the environment "
                                        f"variable {self.password_env!r} is not set")
                smtp.login(str(self.username), password)
            smtp.send_message(message)

    async def send(self, notice: AlertNotice) -> None:
        """Send ``notice`` by email.

        Raises:
            DeliveryError: the SMTP server refused or could not be reached.
        """
        try:
            await anyio.to_thread.run_sync(self._send, self._message(notice))
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"email via {self.host}:{self.port}: "
                                f"{type(exc).__name__}: {exc}") from exc
