"""The event bus of a stack: every event goes to every listener.

Listeners are called synchronously, in registration order, on the engine's hot path; they must
return quickly. A listener that raises is logged (``logging`` logger ``flowyard.events``) and
the event still reaches the others.

Transient events
----------------
``step.progress`` and ``step.delta`` (:data:`TRANSIENT_EVENTS`) report how far a running step
is and the text it is producing. They exist for live displays only:

- they reach only listeners subscribed with ``transient=True`` (the ``flowyard run`` live
  view), so they are **never stored** (the engine's storage listener does not take them), never
  numbered (``seq`` stays 0), and do not appear in ``stack.stream()`` or ``flowyard runs
  logs``;
- they are throttled per step key and attempt: at most one ``step.progress`` and one
  ``step.delta`` every :attr:`EventBus.min_interval_s` seconds (0.2 s by default, so at most
  about five of each per second per step key, whatever the caller's loop rate), plus the ones
  that must not be lost (see :meth:`EventBus.progress` and :meth:`EventBus.text`);
- when no transient listener is subscribed, reporting costs one attribute check and emits
  nothing.

Tools and actions report through their context: :meth:`flowyard.context.ToolContext.progress`
and :meth:`flowyard.context.ToolContext.stream_text`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from numbers import Real
from typing import Any

from flowyard.models import Event

__all__ = ["EventBus", "TRANSIENT_EVENTS", "PROGRESS_EVENT", "DELTA_EVENT",
           "DEFAULT_MIN_INTERVAL_S"]

log = logging.getLogger("flowyard.events")

Listener = Callable[[Event], None]

#: How far a step is: ``data`` = ``step_key``, ``attempt``, ``done``, ``total`` (None when
#: unknown), ``unit`` (plural noun: ``"chunks"``), ``description`` (the phase: ``"embedding"``).
PROGRESS_EVENT = "step.progress"
#: Text a step is producing: ``data`` = ``step_key``, ``attempt``, ``text`` (new text since the
#: previous delta of the same step key and attempt), ``offset`` (characters delivered before
#: this one), ``final`` (True on the last delta; its text may be empty).
DELTA_EVENT = "step.delta"
#: Event types delivered only to listeners subscribed with ``transient=True``; never stored.
TRANSIENT_EVENTS = frozenset({PROGRESS_EVENT, DELTA_EVENT})
#: Default minimum seconds between two throttled events of one step key and kind.
DEFAULT_MIN_INTERVAL_S = 0.2


class _ProgressGate:
    __slots__ = ("last", "signature", "done")

    def __init__(self, last: float, signature: tuple[Any, ...], done: float) -> None:
        self.last = last
        self.signature = signature
        self.done = done


class _DeltaGate:
    __slots__ = ("last", "pending", "offset")

    def __init__(self) -> None:
        self.last = -float("inf")
        self.pending: list[str] = []
        self.offset = 0


def _check_count(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, Real) or value != value or value < 0:
        raise ValueError(f"progress: {name} must be a number >= 0"
                         f"{' or None' if optional else ''}, got {value!r}")


class EventBus:
    """Numbers events per run and fans them out to listeners.

    ``seq`` numbers start at 1 for each run; :meth:`seed` continues a resumed run's numbering.
    Transient events (:data:`TRANSIENT_EVENTS`) are not numbered and reach only transient
    listeners (see the module docstring).

    Attributes:
        min_interval_s: minimum seconds between two throttled transient events of one step
            key, attempt and kind (default :data:`DEFAULT_MIN_INTERVAL_S`).
        clock: monotonic time source of the throttle, in seconds (``time.monotonic``).
    """

    def __init__(self) -> None:
        self._listeners: list[tuple[str, Listener, bool]] = []
        self._transient = 0
        self._seq: dict[str, int] = {}
        self.min_interval_s = DEFAULT_MIN_INTERVAL_S
        self.clock: Callable[[], float] = time.monotonic
        self._gates: dict[tuple[str, str, int, str], Any] = {}
        self._gate_lock = threading.Lock()

    def subscribe(self, listener: Listener, *, name: str = "", transient: bool = False
                  ) -> Callable[[], None]:
        """Add a listener; return a function that removes it.

        Args:
            listener: called with each :class:`~flowyard.models.Event`.
            name: shown in the log when the listener raises.
            transient: also deliver transient events (``step.progress``, ``step.delta``);
                such a listener may be called from worker threads, where sync tools run.
        """
        entry = (name or repr(listener), listener, transient)
        self._listeners.append(entry)
        if transient:
            self._transient += 1

        def unsubscribe() -> None:
            if entry in self._listeners:
                self._listeners.remove(entry)
                if transient:
                    self._transient -= 1

        return unsubscribe

    def wants_transient(self) -> bool:
        """Return True when a listener takes transient events (a live display is showing)."""
        return self._transient > 0

    def seed(self, run_id: str, last_seq: int) -> None:
        """Continue numbering ``run_id``'s events after ``last_seq``."""
        self._seq[run_id] = max(self._seq.get(run_id, 0), last_seq)

    def forget(self, run_id: str) -> None:
        """Drop the sequence counter and the transient-event throttles of a finished run."""
        self._seq.pop(run_id, None)
        if self._gates:
            with self._gate_lock:
                for key in [k for k in self._gates if k[0] == run_id]:
                    del self._gates[key]

    def emit(self, event: Event) -> Event:
        """Number ``event`` within its run and deliver it; return the numbered event.

        A transient event is delivered as it is, to transient listeners only.
        """
        if event.type in TRANSIENT_EVENTS:
            if self._transient:
                for name, listener, transient in tuple(self._listeners):
                    if transient:
                        self._call(name, listener, event)
            return event
        if event.run_id:
            seq = self._seq.get(event.run_id, 0) + 1
            self._seq[event.run_id] = seq
            # a direct constructor call: attrs.evolve costs ~10% of a no-op step
            event = Event(event.type, event.run_id, event.step_id, event.data, event.time, seq)
        for name, listener, _ in tuple(self._listeners):
            self._call(name, listener, event)
        return event

    def publish(self, type: str, run_id: str, step_id: str | None, data: dict[str, Any]
                ) -> Event:
        """Build, number and deliver an event (what :meth:`emit` does, without building the
        event twice); return it. ``data`` becomes the event's data as it is (not copied).
        """
        if type in TRANSIENT_EVENTS or not run_id:
            return self.emit(Event(type, run_id, step_id, data))
        seq = self._seq.get(run_id, 0) + 1
        self._seq[run_id] = seq
        event = Event(type, run_id, step_id, data, time.time(), seq)
        for name, listener, _ in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener %s failed on %s", name, event.type)
        return event

    @staticmethod
    def _call(name: str, listener: Listener, event: Event) -> None:
        try:
            listener(event)
        except Exception:
            log.exception("event listener %s failed on %s", name, event.type)

    def make(self, type: str, run_id: str = "", step_id: str | None = None, **data: Any) -> Event:
        """Build and emit an event; return it numbered."""
        return self.emit(Event(type, run_id, step_id, data))

    # ------------------------------------------------------------------ transient events

    def progress(self, run_id: str, step_id: str | None, step_key: str | None, done: float,
                 total: float | None = None, *, unit: str = "items", description: str = "",
                 attempt: int = 1) -> Event | None:
        """Report that a step key has done ``done`` of ``total`` units; throttled.

        A ``step.progress`` event is emitted when a transient listener is subscribed and
        one of these holds: it is the first report of this step key and attempt; ``unit``,
        ``description`` or ``total`` changed (a new phase); ``done`` reached ``total`` for the
        first time; or :attr:`min_interval_s` seconds passed since the last emitted one. Other
        reports are dropped (the next emitted one carries the current count), and so is a
        report that repeats the last emitted count; so calling this for each of 10,000 items
        emits a handful of events. Safe to call from any thread.

        Args:
            run_id: the run ("" outside a run).
            step_id: the step id.
            step_key: the step key (``id[i]``, ``id#n``; default: the step id).
            done: units done so far (a number >= 0).
            total: units in all (a number >= 0), None when unknown.
            unit: what is counted, a plural noun (``"chunks"``, ``"documents"``).
            description: the current phase (``"embedding"``), shown before the count.
            attempt: the step's attempt number; a new attempt starts a new count.

        Returns:
            the emitted event, or None when nothing was emitted.

        Raises:
            ValueError: ``done`` or ``total`` is not a number >= 0.
        """
        _check_count("done", done)
        _check_count("total", total, optional=True)
        if not self._transient:
            return None
        key = step_key or step_id or ""
        gate_key = (run_id, key, attempt, "progress")
        signature = (unit, description, total)
        finished = total is not None and done >= total
        now = self.clock()
        with self._gate_lock:
            gate = self._gates.get(gate_key)
            if gate is not None and gate.signature == signature:
                if done == gate.done:
                    return None
                reached = finished and gate.done < total  # type: ignore[operator]
                if not reached and now - gate.last < self.min_interval_s:
                    return None
            self._gates[gate_key] = _ProgressGate(now, signature, done)
        return self.emit(Event(PROGRESS_EVENT, run_id, step_id, {
            "step_key": key, "attempt": attempt, "done": done, "total": total, "unit": unit,
            "description": description}))

    def text(self, run_id: str, step_id: str | None, step_key: str | None, delta: str, *,
             final: bool = False, attempt: int = 1) -> Event | None:
        """Report new text produced by a step key (a streamed answer); throttled, never lost.

        Text is buffered per step key and attempt and emitted as one ``step.delta`` event when
        :attr:`min_interval_s` seconds passed since the last one (the first piece goes out at
        once), and always when ``final`` is True: so the ``text`` of the deltas of one step key
        and attempt, concatenated in order, is exactly the concatenation of every ``delta``
        given while a transient listener was subscribed. Call once with ``final=True`` when
        the text is complete (an empty ``delta`` is fine); it also frees the buffer. Safe to
        call from any thread.

        Args:
            run_id: the run ("" outside a run).
            step_id: the step id.
            step_key: the step key (``id[i]``, ``id#n``; default: the step id).
            delta: the new text.
            final: the text is complete: flush what is buffered.
            attempt: the step's attempt number; each attempt has its own buffer.

        Returns:
            the emitted event, or None when the text was buffered or nobody listens.

        Raises:
            TypeError: ``delta`` is not a string.
        """
        if not isinstance(delta, str):
            raise TypeError(f"text delta must be a string, got {type(delta).__name__}")
        key = step_key or step_id or ""
        gate_key = (run_id, key, attempt, "delta")
        if not self._transient:
            if final and self._gates:
                with self._gate_lock:
                    self._gates.pop(gate_key, None)
            return None
        now = self.clock()
        with self._gate_lock:
            gate = self._gates.get(gate_key)
            if gate is None:
                gate = self._gates[gate_key] = _DeltaGate()
            if delta:
                gate.pending.append(delta)
            if not final and (not gate.pending or now - gate.last < self.min_interval_s):
                return None
            text = "".join(gate.pending)
            gate.pending.clear()
            offset = gate.offset
            gate.offset += len(text)
            gate.last = now
            if final:
                del self._gates[gate_key]
        return self.emit(Event(DELTA_EVENT, run_id, step_id, {
            "step_key": key, "attempt": attempt, "text": text, "offset": offset,
            "final": final}))

    def __len__(self) -> int:
        return len(self._listeners)
