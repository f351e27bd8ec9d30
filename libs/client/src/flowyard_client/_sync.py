"""The blocking client: :class:`Client`, a thin wrapper running an :class:`AsyncClient` in an
event loop on a helper thread (anyio's blocking portal).
"""

from __future__ import annotations

import functools
import inspect
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
from anyio.from_thread import BlockingPortal

from ._async import AsyncAgents, AsyncClient, AsyncRuns, AsyncTasks, AsyncWorkflows
from ._metrics import ClientMetrics
from .models import Health, ModelInfo, ProviderInfo, ToolInfo

__all__ = ["Client", "Agents", "Tasks", "Runs", "Workflows"]

#: Namespace methods returning an async iterator: blocking versions return an iterator.
_STREAMS = frozenset({"events"})


class _SyncNamespace:
    """A namespace whose methods run their async twin in the client's event loop."""

    def __init__(self, namespace: Any, portal: BlockingPortal) -> None:
        self._async = namespace
        self._portal = portal

    def __repr__(self) -> str:
        return repr(self._async).replace("Async", "", 1)


def _iterate(portal: BlockingPortal, stream: AsyncIterator[Any]) -> Iterator[Any]:
    """Iterate over an async iterator from another thread; closing it closes the stream."""

    async def step() -> tuple[bool, Any]:
        try:
            return True, await stream.__anext__()
        except StopAsyncIteration:
            return False, None

    try:
        while True:
            more, item = portal.call(step)
            if not more:
                return
            yield item
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            try:
                portal.call(close)
            except RuntimeError:
                pass  # the client was closed first: its event loop is gone


def _blocking(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    if name in _STREAMS:
        @functools.wraps(func)
        def stream(self: _SyncNamespace, *args: Any, **kwargs: Any) -> Iterator[Any]:
            return _iterate(self._portal, getattr(self._async, name)(*args, **kwargs))
        stream.__doc__ = (func.__doc__ or "").replace("An async iterator", "An iterator")
        signature = inspect.signature(func)
        stream.__signature__ = signature.replace(  # type: ignore[attr-defined]
            return_annotation=str(signature.return_annotation).replace("AsyncIterator",
                                                                      "Iterator"))
        return stream

    @functools.wraps(func)
    def call(self: _SyncNamespace, *args: Any, **kwargs: Any) -> Any:
        return self._portal.call(functools.partial(getattr(self._async, name), *args, **kwargs))
    return call


def _sync_namespace(async_cls: type, name: str) -> type[_SyncNamespace]:
    """Build the blocking twin of an async namespace class: same methods, docstrings and
    signatures, each call run in the client's event loop.
    """
    members: dict[str, Any] = {
        "__doc__": (async_cls.__doc__ or "") + " Blocking version.",
        "__module__": __name__,
        "__qualname__": name,
    }
    for attr, func in vars(async_cls).items():
        if attr.startswith("_") or not callable(func):
            continue
        if inspect.iscoroutinefunction(func) or attr in _STREAMS:
            members[attr] = _blocking(attr, func)
    return type(name, (_SyncNamespace,), members)


def _start_portal(backend: str) -> tuple[BlockingPortal, threading.Thread]:
    """Run an event loop with a blocking portal on a new **daemon** thread (unlike anyio's
    ``start_blocking_portal``, whose worker thread would keep the interpreter from exiting
    when a client is never closed).

    Raises:
        Exception: whatever starting the event loop raised (an unknown backend...).
    """
    handover: queue.Queue[BlockingPortal | BaseException] = queue.Queue(1)

    async def main() -> None:
        async with BlockingPortal() as portal:
            handover.put(portal)
            await portal.sleep_until_stopped()

    def target() -> None:
        try:
            anyio.run(main, backend=backend)
        except BaseException as exc:  # noqa: BLE001 (handed to the thread waiting for the portal)
            if handover.empty():
                handover.put(exc)

    thread = threading.Thread(target=target, name="flowyard-client", daemon=True)
    thread.start()
    portal = handover.get()
    if isinstance(portal, BaseException):
        raise portal
    return portal, thread


def _stop_portal(portal: BlockingPortal, thread: threading.Thread) -> None:
    """Stop a portal's event loop and wait for its thread (safe when already stopped)."""
    try:
        portal.call(portal.stop, True)
    except RuntimeError:
        pass  # the event loop has ended already
    if thread is not threading.current_thread():
        thread.join(10)


Agents = _sync_namespace(AsyncAgents, "Agents")
Tasks = _sync_namespace(AsyncTasks, "Tasks")
Runs = _sync_namespace(AsyncRuns, "Runs")
Workflows = _sync_namespace(AsyncWorkflows, "Workflows")


class Client:
    """A blocking client of a flowyard service, with the surface of :class:`AsyncClient`.

    Every call runs the :class:`AsyncClient` method of the same name in an event loop on a
    helper (daemon) thread and waits for it; ``client.runs.events(run_id)`` is a plain iterator. Use
    it as ``with Client(...) as client:`` (or call :meth:`close`) so the thread ends. A
    client may be shared between threads.

    Args:
        base_url: The service's root URL, e.g. ``"http://127.0.0.1:8080"``.
        api_key: Sent as ``Authorization: Bearer <key>``; never shown in ``repr``, logs or
            errors.
        timeout: Seconds one attempt may take in all (None: no limit).
        max_retries: Extra attempts after a retriable failure of an idempotent request.
        backoff: Seconds before the first retry; doubles each retry, plus jitter.
        http2: Speak HTTP/2 (needs ``h2``).
        transport: An :class:`httpx.AsyncBaseTransport` used instead of the network.
        backend: The helper thread's event loop: ``"asyncio"`` or ``"trio"``.

    Raises:
        ValueError: invalid settings (as :class:`AsyncClient`).
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float | None = 30.0,
                 max_retries: int = 3, backoff: float = 0.5, http2: bool = False,
                 transport: httpx.AsyncBaseTransport | None = None,
                 backend: str = "asyncio") -> None:
        self._async = AsyncClient(base_url, api_key, timeout=timeout, max_retries=max_retries,
                                  backoff=backoff, http2=http2, transport=transport)
        self._lock = threading.Lock()
        portal, thread = _start_portal(backend)
        self._portal: BlockingPortal | None = portal
        # Stops the event loop when the client is closed, collected, or at exit.
        self._stop = weakref.finalize(self, _stop_portal, portal, thread)
        self.agents = Agents(self._async.agents, self._portal)
        self.tasks = Tasks(self._async.tasks, self._portal)
        self.runs = Runs(self._async.runs, self._portal)
        self.workflows = Workflows(self._async.workflows, self._portal)

    def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        portal = self._portal
        if portal is None:
            raise RuntimeError("the client is closed")
        return portal.call(functools.partial(func, *args, **kwargs))

    @property
    def base_url(self) -> str:
        """The service's root URL."""
        return self._async.base_url

    @property
    def metrics(self) -> ClientMetrics:
        """Client-side request metrics: counts and latency percentiles (seconds) per route."""
        return self._async.metrics

    def close(self) -> None:
        """Close the pooled connections and stop the helper thread (idempotent)."""
        with self._lock:
            portal, self._portal = self._portal, None
        if portal is None:
            return
        try:
            portal.call(self._async.aclose)
        finally:
            self._stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncClient(", "Client(", 1)

    def health(self, *, ready: bool = True) -> Health:
        """Return the service's health; see :meth:`AsyncClient.health`."""
        return self._call(self._async.health, ready=ready)  # type: ignore[no-any-return]

    def get_metrics(self) -> str:
        """Return the service's Prometheus metrics text; see :meth:`AsyncClient.get_metrics`."""
        return self._call(self._async.get_metrics)  # type: ignore[no-any-return]

    def providers(self) -> list[ProviderInfo]:
        """Return the service's model providers (``GET /v1/providers``)."""
        return self._call(self._async.providers)  # type: ignore[no-any-return]

    def models(self) -> list[ModelInfo]:
        """Return the service's models with prices (``GET /v1/models``)."""
        return self._call(self._async.models)  # type: ignore[no-any-return]

    def tools(self) -> list[ToolInfo]:
        """Return the service's tools (``GET /v1/tools``)."""
        return self._call(self._async.tools)  # type: ignore[no-any-return]

