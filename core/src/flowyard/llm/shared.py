"""Rate limits, circuit breakers and budgets shared by every process of a deployment.

Without configuration, each process keeps its limits in its own memory
(:mod:`flowyard.llm.ratelimit`, :mod:`flowyard.llm.circuit`, :mod:`flowyard.llm.budget`), so
four worker processes under ``rpm = 60`` may send 240 requests a minute. With::

    [limits]
    shared = "storage"                     # the stack's own storage, or a storage URL:
    # shared = "redis://127.0.0.1:6379/0"  # (opened by the stack for limits only)

the gateway keeps them in a :class:`~flowyard.interfaces.SupportsSharedLimits` backend
(flowyard-sql on PostgreSQL or SQLite, flowyard-redis, or the in-memory storage for one
process), where each admission, breaker transition and budget reservation is one atomic
operation across every process using it:

* rate limits: every configured limiter of a call (callers', the model's, the provider's)
  admits it through :meth:`~flowyard.interfaces.SupportsSharedLimits.shared_rate_acquire`
  under the key ``"rate:<limiter>"``; the model's key is always asked, so that a 429's
  pause (``shared_rate_pause``) holds every process. Within a process, callers wait for a key
  in arrival order (one lock per key: a local FIFO pre-queue) and the head sleeps the
  seconds the backend returns; ``limits.max_wait_s`` bounds the whole wait.
* breakers: ``"breaker:<provider>"``, with the ``[circuit]`` settings; ``circuit.state``
  events report the transitions this process sees.
* budgets: per-caller daily budgets and ``[budgets.global]`` are reserved together, all or
  none (keys from :meth:`~flowyard.llm.budget.CallerBudgets.shared_budgets`); the run, step
  and agent budgets stay in the process (they belong to one run) and are reserved first.

Failure: when the backend cannot be opened or reached, the call fails with
:class:`~flowyard.errors.StorageError` naming it (fail closed); there is no silent fallback to
per-process limits. A process that dies holding a concurrency slot or a budget reservation
loses it after ``limits.hold_s`` (600 s by default): the slot is freed, the reservation is
counted as spent.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from flowyard.errors import BudgetExceeded, CircuitOpenError, ConfigError, StorageError
from flowyard.interfaces import SupportsSharedLimits
from flowyard.llm.circuit import BreakerSet
from flowyard.llm.ratelimit import LimiterSet, RateLimits

__all__ = ["SharedLimits", "SharedPermit", "open_shared_limits"]

_WINDOWS = (("rpm", 60.0), ("rph", 3600.0), ("rpd", 86400.0))


def _windows(limits: RateLimits) -> list[tuple[float, int]]:
    """The ``(seconds, most requests)`` windows of ``limits`` (1 s first when set)."""
    found = [(seconds, getattr(limits, name)) for name, seconds in _WINDOWS
             if getattr(limits, name) is not None]
    if limits.per_second is not None:
        found.insert(0, (1.0, limits.per_second))
    return found


class SharedPermit:
    """The admissions of one call (one permit id under each of its keys).

    Attributes:
        permit_id: the call's permit id (UUID hex).
        waited_s: seconds the call waited for its limits.
    """

    __slots__ = ("_shared", "_keys", "permit_id", "waited_s", "_released")

    def __init__(self, shared: SharedLimits, keys: list[str], permit_id: str,
                 waited_s: float) -> None:
        self._shared = shared
        self._keys = keys
        self.permit_id = permit_id
        self.waited_s = waited_s
        self._released = False

    async def release(self, actual_tokens: int | None = None) -> None:
        """Free the call's concurrency slots and record its actual tokens (tokens; None:
        keep the estimate). Idempotent; runs shielded from cancellation.

        Raises:
            StorageError: the backend failed (the slots then free themselves after
                ``limits.hold_s``).
        """
        if self._released:
            return
        self._released = True
        with anyio.CancelScope(shield=True):
            for key in self._keys:
                await self._shared._run(self._shared.backend.shared_rate_release(
                    key, self.permit_id, actual_tokens=actual_tokens))


class SharedLimits:
    """The gateway's rate limits, breakers and caller/global budgets on a shared backend.

    Args:
        backend: the opened :class:`~flowyard.interfaces.SupportsSharedLimits` backend.
        where: the backend's URL (``"storage"`` resolved), for messages.
        limiters: the parsed ``[limits]`` table (limits per key, ``max_wait_s``,
            ``hold_s``).
        breakers: the parsed ``[circuit]`` table (settings per provider).
        on_change: called as ``on_change(provider, old, new)`` when this process sees a
            breaker change state.
    """

    def __init__(self, backend: Any, *, where: str, limiters: LimiterSet,
                 breakers: BreakerSet,
                 on_change: Callable[[str, str, str], None] | None = None) -> None:
        self.backend = backend
        self.where = where
        self.limiters = limiters
        self.breakers = breakers
        self.on_change = on_change
        self._locks: dict[str, anyio.Lock] = {}
        self._states: dict[str, str] = {}  # provider -> breaker state last seen here

    async def _run(self, awaitable: Any) -> Any:
        """Await a backend operation; a StorageError is raised again naming the backend as
        the shared limits' (fail closed).
        """
        try:
            return await awaitable
        except StorageError as exc:
            raise StorageError(f"shared limits backend {self.where}: {exc} (calls fail "
                               f"while it is unreachable)", retriable=exc.retriable) from exc

    # ------------------------------------------------------------------ rate limits

    def _keys(self, provider: str, model: str, callers: Sequence[tuple[str, str]]
              ) -> list[tuple[str, RateLimits | None]]:
        keys: list[tuple[str, RateLimits | None]] = []
        for kind, ident in callers:
            limits = (self.limiters.callers.get(f"{kind}:{ident}")
                      or self.limiters.callers.get(f"{kind}:*"))
            if limits is not None:
                keys.append((f"{kind}:{ident}", limits))
        keys.append((f"{provider}/{model}", self.limiters.configured.get(f"{provider}/{model}")))
        limits = self.limiters.configured.get(provider)
        if limits is not None:
            keys.append((provider, limits))
        return keys

    async def acquire(self, provider: str, model: str, tokens: int = 0,
                      callers: Sequence[tuple[str, str]] = ()) -> SharedPermit:
        """Wait until every limiter of the call admits it (callers', model's, provider's,
        in that order); each key's waiters of this process queue in arrival order.

        Args:
            provider: the provider name.
            model: the model id.
            tokens: the tokens the call may use (for ``tpm``).
            callers: the caller's ``(kind, id)`` pairs.

        Returns:
            the permit (release it when the call ends).

        Raises:
            TimeoutError: not admitted within ``limits.max_wait_s`` (nothing held).
            StorageError: the backend failed (nothing held, or held until ``hold_s``).
        """
        permit_id = uuid.uuid4().hex
        started = time.monotonic()
        max_wait = self.limiters.max_wait_s
        deadline = math.inf if max_wait is None else started + max_wait
        held: list[str] = []
        to_release: list[str] = []
        permit = SharedPermit(self, to_release, permit_id, 0.0)
        hold_s = self.limiters.hold_s
        try:
            for name, limits in self._keys(provider, model, callers):
                key = f"rate:{name}"
                windows = _windows(limits) if limits is not None else []
                tpm = limits.tpm if limits is not None else None
                concurrency = limits.concurrency if limits is not None else None
                lock = self._locks.get(key)
                if lock is None:
                    lock = self._locks[key] = anyio.Lock()
                ask = self.backend.shared_rate_acquire
                # nobody of this process waits for the key: ask at once (no queue needed)
                delay = (await self._run(ask(key, permit_id=permit_id, windows=windows,
                                             tokens=tokens, tpm=tpm, concurrency=concurrency,
                                             hold_s=hold_s))
                         if not lock.locked() else -1.0)
                if delay != 0.0:
                    async with lock:  # wait in arrival order; the head asks the backend
                        while True:
                            if delay > 0.0:
                                rest = deadline - time.monotonic()
                                if rest <= delay:
                                    raise TimeoutError(
                                        f"rate limit {name!r} (shared, {self.where}): not "
                                        f"admitted within {max_wait:g} s")
                                await anyio.sleep(delay)
                            delay = await self._run(ask(
                                key, permit_id=permit_id, windows=windows, tokens=tokens,
                                tpm=tpm, concurrency=concurrency, hold_s=hold_s))
                            if delay == 0.0:
                                break
                held.append(key)
                if concurrency is not None or tpm is not None:
                    to_release.append(key)
        except BaseException:
            await permit.release()
            raise
        waited = time.monotonic() - started
        permit.waited_s = waited if waited > 0.001 else 0.0
        return permit

    async def pause(self, provider: str, model: str | None, seconds: float) -> str:
        """Pause the model's limiter (the provider's when ``model`` is None) in every process
        for ``seconds``; return the limiter's name.

        Raises:
            StorageError: the backend failed.
        """
        name = f"{provider}/{model}" if model else provider
        await self._run(self.backend.shared_rate_pause(f"rate:{name}", seconds))
        return name

    # ------------------------------------------------------------------ breakers

    def _seen(self, provider: str, state: str) -> None:
        state = "half_open" if state == "probe" else state
        old = self._states.get(provider, "closed")
        if old != state:
            self._states[provider] = state
            if self.on_change is not None:
                self.on_change(provider, old, state)

    async def _breaker(self, provider: str, event: str) -> tuple[str, float | None] | None:
        settings = self.breakers.settings(provider)
        if settings is None:
            return None
        threshold, cooldown = settings
        answer = await self._run(self.backend.shared_breaker(
            f"breaker:{provider}", event=event, threshold=threshold, cooldown_s=cooldown))
        self._seen(provider, answer[0])
        return answer  # type: ignore[no-any-return]

    def _open_error(self, provider: str, state: str, reopens: float | None
                    ) -> CircuitOpenError:
        if state == "half_open":
            return CircuitOpenError(f"circuit of provider {provider!r} is half open (shared, "
                                    f"{self.where}) and its probe call is in flight",
                                    provider=provider)
        wait = f"; next probe in {max(0.0, reopens - time.time()):.1f} s" if reopens else ""
        return CircuitOpenError(f"circuit of provider {provider!r} is open (shared, "
                                f"{self.where}){wait}", provider=provider)

    async def check(self, provider: str) -> None:
        """Fail fast while the provider's shared breaker is open and cooling down.

        Raises:
            CircuitOpenError: open.
            StorageError: the backend failed.
        """
        answer = await self._breaker(provider, "check")
        if answer is not None and answer[0] == "open":
            raise self._open_error(provider, *answer)

    async def before_call(self, provider: str) -> bool:
        """Ask the provider's shared breaker for a call; return True when this call is the
        half-open probe.

        Raises:
            CircuitOpenError: open, or half open with its probe in flight.
            StorageError: the backend failed.
        """
        answer = await self._breaker(provider, "before_call")
        if answer is None or answer[0] == "closed":
            return False
        if answer[0] == "probe":
            return True
        raise self._open_error(provider, *answer)

    async def outcome(self, provider: str, event: str, probe: bool) -> None:
        """Record a call's outcome in the provider's shared breaker (shielded).

        Args:
            provider: the provider name.
            event: ``"success"``, ``"failure"`` or ``"abort"`` (sent only for a probe).
            probe: whether the call was the probe.

        Raises:
            StorageError: the backend failed.
        """
        if event == "abort" and not probe:
            return
        with anyio.CancelScope(shield=True):
            await self._breaker(provider, event)

    # ------------------------------------------------------------------ budgets

    async def reserve(self, budgets: Sequence[tuple[str, float, str, str]], amount_usd: float
                      ) -> str:
        """Hold ``amount_usd`` (US dollars) in every shared budget, all or none.

        Args:
            budgets: ``(key, limit, scope, name)`` from
                :meth:`~flowyard.llm.budget.CallerBudgets.shared_budgets`.
            amount_usd: the call's estimated maximum cost.

        Returns:
            the reservation id (settle it with :meth:`settle`).

        Raises:
            BudgetExceeded: a budget cannot cover it (nothing held); ``scope`` is the
                caller kind or ``global``.
            StorageError: the backend failed.
        """
        rid = uuid.uuid4().hex
        refused = await self._run(self.backend.shared_budget_reserve(
            rid, [(key, limit) for key, limit, _, _ in budgets], amount_usd,
            hold_s=self.limiters.hold_s))
        if refused is None:
            return rid
        key, spent, reserved = refused
        for bkey, limit, scope, name in budgets:
            if bkey == key:
                raise BudgetExceeded(
                    f"{scope} budget {name!r} of ${limit:.6f} (shared, {self.where}) cannot "
                    f"cover ${amount_usd:.6f} (spent ${spent:.6f}, reserved ${reserved:.6f})",
                    scope=scope, limit_usd=limit, requested_usd=amount_usd)
        raise StorageError(f"shared limits backend {self.where} refused a reservation for an "
                           f"unknown budget {key!r}")

    async def settle(self, reservation_id: str, actual_usd: float | None) -> None:
        """Replace the reservation with the actual cost (US dollars; None: unknown, nothing
        spent). Shielded from cancellation.

        Raises:
            StorageError: the backend failed (the reservation then counts as spent after
                ``limits.hold_s``).
        """
        with anyio.CancelScope(shield=True):
            await self._run(self.backend.shared_budget_settle(reservation_id, actual_usd))


async def open_shared_limits(stack: Any, limiters: LimiterSet, breakers: BreakerSet,
                             on_change: Callable[[str, str, str], None] | None = None
                             ) -> SharedLimits | None:
    """Open the backend named by ``[limits] shared`` (None when it is not set).

    Args:
        stack: the stack (its storage, storage schemes and ``open_storage``).
        limiters: the parsed ``[limits]`` table.
        breakers: the parsed ``[circuit]`` table.
        on_change: breaker transition callback.

    Returns:
        the shared limits, or None for per-process limits.

    Raises:
        ConfigError: the backend does not implement SupportsSharedLimits (names its URL).
        StorageError: the backend could not be opened (names its URL).
        UnknownNameError: no plugin registers the URL's scheme.
    """
    setting = limiters.shared
    if setting is None:
        return None
    url = stack.storage_url() if setting == "storage" else setting
    opener = getattr(stack, "open_storage", None)
    if opener is None:
        raise ConfigError(f"limits.shared = {setting!r} needs a Stack (open_storage); "
                          f"{type(stack).__name__} has none")
    try:
        backend = await opener(url)
    except StorageError as exc:
        raise StorageError(f"shared limits backend {url} (limits.shared = {setting!r}) could "
                           f"not be opened: {exc}", retriable=exc.retriable) from exc
    if not isinstance(backend, SupportsSharedLimits):
        what = "the stack's storage" if setting == "storage" else "the storage"
        raise ConfigError(
            f"limits.shared = {setting!r}: {what} {url} ({type(backend).__name__}) does not "
            f"implement SupportsSharedLimits; use a storage that does (flowyard-sql, "
            f"flowyard-redis) or set limits.shared to its URL")
    return SharedLimits(backend, where=url, limiters=limiters, breakers=breakers,
                        on_change=on_change)
