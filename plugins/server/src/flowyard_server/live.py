"""Live run events for Server-Sent Events: the durable log followed by polling storage, plus the
transient token deltas and progress reports of model calls and steps.

The durable log (``storage.list_events``) is the source of truth: it works for runs executed by
any process, and a reconnecting client passes the last ``seq`` it saw (``Last-Event-ID``) to
continue exactly after it.

Transient events (``step.delta``, ``step.progress``) are never stored in the log. They reach an
SSE stream in one of two ways, and carry no ``id:`` either way (they do not move the client's
``Last-Event-ID``):

- :class:`DeltaHub` subscribes to the event bus of the server's own stack and hands the events
  of runs executing in the server process (its in-process worker) to the streams of their run;
- :class:`DeltaRelay` runs in every worker (``flowyard worker`` processes, and the in-process
  worker too, for other ``flowyard serve`` processes on the same storage) and writes the
  transient events of the runs it executes to the storage's key-value store (namespace
  :data:`RELAY_NAMESPACE`, one entry per run, the last :data:`RELAY_KEEP` events, rewritten at
  most every ``relay_interval`` seconds); :class:`RelayReader` reads them for the streams of
  every server process, skipping the entries its own worker wrote (the hub delivered those).

The events of a sub-workflow's runs are delivered to the streams of the run that started it
(its root run: the run a task follows), with their own ``run_id``.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from flowyard import Event, Stack, StorageError, json_default

__all__ = ["DeltaHub", "DeltaRelay", "RelayReader", "RunTree", "follow_run", "event_json",
           "RELAY_NAMESPACE", "RELAY_KEEP"]

log = logging.getLogger("flowyard_server.live")

#: Key-value namespace of the relayed transient events (key: the root run id).
RELAY_NAMESPACE = "server.deltas"
#: Transient events kept per run in the relay (older ones are dropped first).
RELAY_KEEP = 200

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


def event_dict(event: Event) -> dict[str, Any]:
    """The fields of a :class:`flowyard_client.models.RunEvent` for ``event`` (JSON-ready when
    the event's data is).
    """
    return {"seq": event.seq, "type": event.type, "run_id": event.run_id,
            "step_id": event.step_id, "time": event.time, "data": event.data}


class RunTree:
    """Which root run each sub-workflow run belongs to, learned from ``run.started`` events
    (their ``parent_run_id``). Not thread-safe: callers hold their own lock.

    Args:
        limit: most child runs remembered (the oldest are forgotten first; a child run is
            forgotten when it finishes).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._root: dict[str, str] = {}

    def observe(self, event: Event) -> str:
        """Learn from ``event`` and return the root run id of its run."""
        run_id = event.run_id
        if event.type == "run.started":
            parent = event.data.get("parent_run_id")
            if isinstance(parent, str) and parent:
                if len(self._root) >= self.limit:
                    self._root.pop(next(iter(self._root)))
                self._root[run_id] = self._root.get(parent, parent)
        root = self._root.get(run_id, run_id)
        if event.type == "run.finished":
            self._root.pop(run_id, None)
        return root


class DeltaHub:
    """Fans the stack's transient events (``step.delta``, ``step.progress``) out to listeners
    by root run id. The bus may call it from worker threads (sync tools), hence the lock.
    """

    def __init__(self) -> None:
        self._listeners: dict[str, dict[int, collections.deque[Event]]] = {}
        self._lock = threading.Lock()
        self._unsubscribe: Callable[[], None] | None = None
        self._tree = RunTree()

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
        """Deliver a transient event to the listeners of its root run (others are only
        observed, for the run tree).
        """
        with self._lock:
            root = self._tree.observe(event)
            if event.type not in _DELTAS:
                return
            for queue in self._listeners.get(root, {}).values():
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


class DeltaRelay:
    """Writes the transient events of the runs a worker executes to the storage's key-value
    store, for the SSE streams of every server process on that storage.

    The bus calls the relay (from any thread); :meth:`run` writes what arrived every
    ``interval`` seconds: for each root run with new events, one ``kv_set`` of the entry
    ``{"writer": ..., "next": n, "updated": unix seconds, "events": [[index, event], ...]}``
    holding the run's last ``keep`` events (indexes count from 1 and never repeat). Every
    ``sweep_interval`` seconds entries not updated for ``ttl`` seconds are deleted.

    Args:
        storage: the stack's storage (``kv_set``, ``kv_delete``, ``kv_list``).
        writer: the id of the writing worker (its name), stored in each entry.
        interval: seconds between two writes of one run's entry (default 0.25).
        keep: events kept per run (default :data:`RELAY_KEEP`).
        ttl: seconds an entry is kept after its last update (default 600).
        sweep_interval: seconds between two sweeps of stale entries (default 60).
    """

    def __init__(self, storage: Any, *, writer: str, interval: float = 0.25,
                 keep: int = RELAY_KEEP, ttl: float = 600.0, sweep_interval: float = 60.0
                 ) -> None:
        self.storage = storage
        self.writer = writer
        self.interval = interval
        self.keep = keep
        self.ttl = ttl
        self.sweep_interval = sweep_interval
        self._lock = threading.Lock()
        self._tree = RunTree()
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._entries: dict[str, dict[str, Any]] = {}
        self._unsubscribe: Callable[[], None] | None = None

    def attach(self, stack: Stack) -> None:
        """Subscribe to ``stack.events`` as a transient listener (model calls then stream)."""
        if self._unsubscribe is None:
            self._unsubscribe = stack.events.subscribe(self, name="server.relay",
                                                       transient=True)

    def detach(self) -> None:
        """Unsubscribe from the event bus."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def __call__(self, event: Event) -> None:
        """Keep a transient event for the next write (other events are only observed)."""
        with self._lock:
            root = self._tree.observe(event)
            if event.type in _DELTAS:
                self._pending.setdefault(root, []).append(event_dict(event))

    async def flush(self, run_id: str | None = None) -> None:
        """Write the pending events (of ``run_id`` only, or of every run) now.

        Raises:
            StorageError: the storage refused the write (the events are kept for the next).
        """
        with self._lock:
            if run_id is None:
                pending, self._pending = self._pending, {}
            else:
                events = self._pending.pop(run_id, None)
                pending = {run_id: events} if events else {}
        roots = list(pending)
        for position, root in enumerate(roots):
            entry = self._entries.setdefault(root, {"writer": self.writer, "next": 1,
                                                    "updated": 0.0, "events": []})
            for event in pending[root]:
                entry["events"].append([entry["next"], event])
                entry["next"] += 1
            del entry["events"][:-self.keep]
            entry["updated"] = time.time()
            try:
                await self.storage.kv_set(RELAY_NAMESPACE, root, entry)
            except StorageError:
                with self._lock:  # nothing is lost: written with the next flush
                    self._pending.setdefault(root, [])
                    for later in roots[position + 1:]:
                        self._pending[later] = pending[later] + self._pending.get(later, [])
                raise

    def forget(self, run_id: str) -> None:
        """Drop this process's copy of a finished run's entry (the stored one stays until it
        is swept, so streams still read its last events).
        """
        self._entries.pop(run_id, None)

    async def sweep(self, now: float | None = None) -> int:
        """Delete stored entries not updated for ``ttl`` seconds; return how many.

        Raises:
            StorageError: the storage failed.
        """
        cutoff = (time.time() if now is None else now) - self.ttl
        deleted, after = 0, ""
        while True:
            page = await self.storage.kv_list(RELAY_NAMESPACE, after=after, limit=200)
            for key, entry in page:
                updated = entry.get("updated") if isinstance(entry, dict) else None
                if not isinstance(updated, (int, float)) or updated < cutoff:
                    await self.storage.kv_delete(RELAY_NAMESPACE, key)
                    self._entries.pop(key, None)
                    deleted += 1
            if len(page) < 200:
                return deleted
            after = page[-1][0]

    async def run(self) -> None:
        """Write pending events every ``interval`` seconds and sweep stale entries every
        ``sweep_interval`` seconds, until cancelled (storage failures are logged and retried).
        """
        next_sweep = time.monotonic()
        while True:
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.sweep_interval
                    await self.sweep()
                await self.flush()
            except StorageError:
                log.exception("relaying transient run events failed; retrying")
            await anyio.sleep(self.interval)


class RelayReader:
    """Reads relayed transient events (see :class:`DeltaRelay`) for the SSE streams of one
    server process; the streams of one run share one ``kv_get`` per ``max_age`` seconds.

    Args:
        stack: the stack whose storage is read (looked up on each read: the stack opens it).
        local_writer: the name of this process's own worker, whose entries are skipped (the
            :class:`DeltaHub` delivers its events), or None.
        max_age: seconds a read entry is reused (default 0.2).
    """

    def __init__(self, stack: Stack, *, local_writer: str | None, max_age: float = 0.2
                 ) -> None:
        self.stack = stack
        self.local_writer = local_writer
        self.max_age = max_age
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def entry(self, run_id: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """Return the run's relay entry written by another process, or None.

        Args:
            run_id: the root run id.
            fresh: read the storage even when a recent read is cached.

        Raises:
            StorageError: the storage failed.
        """
        lock = self._locks.setdefault(run_id, anyio.Lock())
        async with lock:
            cached = self._cache.get(run_id)
            if cached is not None and not fresh and time.monotonic() - cached[0] < self.max_age:
                return cached[1]
            value = await self.stack.storage.kv_get(RELAY_NAMESPACE, run_id)
            if not isinstance(value, dict) or value.get("writer") == self.local_writer \
                    or not isinstance(value.get("events"), list):
                value = None
            if len(self._cache) >= 4096:
                self._cache.pop(next(iter(self._cache)))
            self._cache[run_id] = (time.monotonic(), value)
        if len(self._locks) > 4096:  # bounded: drop the locks nobody holds or waits for
            for key in [k for k, v in self._locks.items()
                        if not v.locked() and not v.statistics().tasks_waiting]:
                del self._locks[key]
        return value

    async def since(self, run_id: str, after: int, *, fresh: bool = False
                    ) -> tuple[int, list[dict[str, Any]]]:
        """Return the index of the newest relayed event and the events after index ``after``
        (``after`` -1: none, only the newest index, for a stream that starts now).

        Raises:
            StorageError: the storage failed.
        """
        entry = await self.entry(run_id, fresh=fresh)
        if entry is None:
            return max(after, 0), []
        newest = int(entry.get("next", 1)) - 1
        if after < 0:
            return newest, []
        return newest, [event for index, event in entry["events"] if index > after]


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
                     hub: DeltaHub | None, task_done: Callable[[], Any],
                     relay: RelayReader | None = None, end_grace: float = 2.0
                     ) -> AsyncIterator[dict[str, Any]]:
    """Yield the run's events as ``EventSourceResponse`` items (``id``, ``event``, ``data``).

    Stored events come in ``seq`` order starting after ``after_seq``; transient events (no
    ``id``) of the run and its sub-workflow runs, from the hub (runs executing in this
    process) and the relay (runs executing elsewhere), starting with those produced after the
    stream opened, are interleaved by their ``time``: a stream that catches up on stored
    events sends a transient event after the stored events that happened before it. Before ``run.finished`` the stream waits up
    to ``end_grace`` seconds for the run's task to end, so the last transient events come
    before it. The stream ends after the ``run.finished`` event of a run that stays ended (its
    task is not queued or running again).

    Args:
        stack: the open stack.
        run_id: the run to follow.
        after_seq: the last ``seq`` the client saw (0: from the start).
        poll: seconds between two reads of the durable log when nothing new was found.
        hub: the transient-event hub of this process, or None.
        task_done: an async callable returning True when the run's task has ended.
        relay: the reader of transient events relayed by other processes, or None.
        end_grace: most seconds ``run.finished`` is held back while the task has not ended.
    """
    storage = stack.storage
    seq = after_seq
    deltas = hub.listen(run_id) if hub is not None else None
    relayed = -1  # index of the last relayed event taken (-1: start with the newest)
    #: transient events taken but not yet sent: (time, type, JSON text), sent in time order
    #: among the stored events (none is sent ahead of a stored event that happened before)
    held: list[tuple[float, str, str]] = []
    finished_seen = False

    async def take(*, fresh: bool = False) -> None:
        nonlocal relayed
        while deltas:
            delta = deltas.popleft()
            held.append((delta.time, delta.type, event_json(delta)))
        if relay is not None:
            relayed, items = await relay.since(run_id, relayed, fresh=fresh)
            held.extend((float(item.get("time") or 0.0), str(item["type"]),
                         json.dumps(item, separators=(",", ":"))) for item in items)
        held.sort(key=lambda item: item[0])

    try:
        while True:
            await take()
            page = await storage.list_events(run_id, after_seq=seq, limit=500)
            for event in page:
                seq = event.seq
                if event.type == "run.finished":
                    # the run's transient events come before its end: wait (bounded) for
                    # the worker to record the task's end (it writes its last relayed
                    # events first), then send every event held
                    if relay is not None:
                        deadline = time.monotonic() + end_grace
                        while not await task_done() and time.monotonic() < deadline:
                            await anyio.sleep(poll)
                    await take(fresh=True)
                    cut = len(held)
                else:
                    cut = 0
                    while cut < len(held) and held[cut][0] <= event.time:
                        cut += 1
                for item in held[:cut]:
                    yield {"event": item[1], "data": item[2]}
                del held[:cut]
                yield {"id": str(event.seq), "event": event.type,
                       "data": _ENCODED.text(event)}
                finished_seen = event.type == "run.finished"
            if page:
                continue  # read on until the log is drained
            for item in held:  # caught up with the log: the rest are newer
                yield {"event": item[1], "data": item[2]}
            held.clear()
            if (finished_seen or await _ended(storage, run_id)) and await task_done():
                more = await storage.list_events(run_id, after_seq=seq, limit=1)
                if more:
                    continue
                await take(fresh=True)
                for item in held:
                    yield {"event": item[1], "data": item[2]}
                return
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
