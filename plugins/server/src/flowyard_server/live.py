"""Live run events for Server-Sent Events: the durable log followed by polling storage, plus the
transient token deltas of runs executing in this process.

The durable log (``storage.list_events``) is the source of truth: it works for runs executed by
any process, and a reconnecting client passes the last ``seq`` it saw (``Last-Event-ID``) to
continue exactly after it. Transient ``step.delta`` events are never stored; :class:`DeltaHub`
subscribes to the stack's event bus and hands them to the SSE streams of their run (they carry
no ``id:``, so they do not move the client's ``Last-Event-ID``).
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from flowyard import Event, Stack, json_default

__all__ = ["DeltaHub", "follow_run", "event_json"]

#: Run statuses after which no event is appended (unless the run is resumed).
_ENDED = frozenset({"completed", "failed", "cancelled", "partial"})
_DELTAS = frozenset({"step.delta", "step.progress"})
#: Most deltas kept per listener; older ones are dropped when a client reads slowly.
MAX_BUFFERED_DELTAS = 1000


def event_json(event: Event) -> str:
    """The JSON text of a :class:`flowyard_client.models.RunEvent` for ``event``."""
    return json.dumps({"seq": event.seq, "type": event.type, "run_id": event.run_id,
                       "step_id": event.step_id, "time": event.time, "data": event.data},
                      default=json_default, separators=(",", ":"))


class DeltaHub:
    """Fans the stack's transient events (``step.delta``, ``step.progress``) out to listeners
    by run id. The bus may call it from worker threads (sync tools), hence the lock.
    """

    def __init__(self) -> None:
        self._listeners: dict[str, dict[int, collections.deque[Event]]] = {}
        self._lock = threading.Lock()
        self._unsubscribe: Callable[[], None] | None = None

    def attach(self, stack: Stack) -> None:
        """Subscribe to ``stack.events`` as a transient listener (model calls then stream)."""
        if self._unsubscribe is None:
            self._unsubscribe = stack.events.subscribe(self, name="server.sse",
                                                       transient=True)

    def detach(self) -> None:
        """Unsubscribe from the event bus."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def __call__(self, event: Event) -> None:
        """Deliver a transient event to the listeners of its run (others are ignored)."""
        if event.type not in _DELTAS:
            return
        with self._lock:
            for queue in self._listeners.get(event.run_id, {}).values():
                queue.append(event)

    def listen(self, run_id: str) -> collections.deque[Event]:
        """Return a new buffer that receives the run's transient events (bounded)."""
        queue: collections.deque[Event] = collections.deque(maxlen=MAX_BUFFERED_DELTAS)
        with self._lock:
            self._listeners.setdefault(run_id, {})[id(queue)] = queue
        return queue

    def unlisten(self, run_id: str, queue: collections.deque[Event]) -> None:
        """Stop filling ``queue``."""
        with self._lock:
            listeners = self._listeners.get(run_id)
            if listeners is not None:
                listeners.pop(id(queue), None)
                if not listeners:
                    del self._listeners[run_id]


class _EncodedEvents:
    """The JSON text of recently streamed stored events, by ``(run id, seq)``: a stored event
    never changes, so the subscribers of one run share one encoding of each event instead of
    each encoding it again (bounded: the oldest entries are dropped first).
    """

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._texts: dict[tuple[str, int], str] = {}

    def text(self, event: Event) -> str:
        """Return :func:`event_json` of a stored event (encoded once while it is cached)."""
        key = (event.run_id, event.seq)
        text = self._texts.get(key)
        if text is None:
            text = event_json(event)
            if len(self._texts) >= self.size:
                self._texts.pop(next(iter(self._texts)))
            self._texts[key] = text
        return text


_ENCODED = _EncodedEvents()


async def follow_run(stack: Stack, run_id: str, *, after_seq: int, poll: float,
                     hub: DeltaHub | None, task_done: Callable[[], Any]
                     ) -> AsyncIterator[dict[str, Any]]:
    """Yield the run's events as ``EventSourceResponse`` items (``id``, ``event``, ``data``).

    Stored events come in ``seq`` order starting after ``after_seq``; transient deltas (no
    ``id``) are interleaved as they arrive. The stream ends after the ``run.finished`` event
    of a run that stays ended (its task is not queued or running again).

    Args:
        stack: the open stack.
        run_id: the run to follow.
        after_seq: the last ``seq`` the client saw (0: from the start).
        poll: seconds between two reads of the durable log when nothing new was found.
        hub: the transient-event hub of this process, or None.
        task_done: an async callable returning True when the run's task has ended.
    """
    storage = stack.storage
    seq = after_seq
    deltas = hub.listen(run_id) if hub is not None else None
    finished_seen = False
    try:
        while True:
            # deltas first: they were produced before the stored events read next
            while deltas:
                event = deltas.popleft()
                yield {"event": event.type, "data": event_json(event)}
            page = await storage.list_events(run_id, after_seq=seq, limit=500)
            for event in page:
                seq = event.seq
                yield {"id": str(event.seq), "event": event.type,
                       "data": _ENCODED.text(event)}
                finished_seen = event.type == "run.finished"
            if page:
                continue  # read on until the log is drained
            if (finished_seen or await _ended(storage, run_id)) and await task_done():
                more = await storage.list_events(run_id, after_seq=seq, limit=1)
                if not more:
                    return
                continue
            await anyio.sleep(poll)
    finally:
        if deltas is not None and hub is not None:
            hub.unlisten(run_id, deltas)


async def _ended(storage: Any, run_id: str) -> bool:
    """True when the run exists and has ended (a client that resumes after the last event)."""
    try:
        record = await storage.get_run(run_id)
    except LookupError:
        return False
    return record.status in _ENDED
