"""Rate limits per provider and per model: requests per second/minute/hour/day, tokens per
minute and concurrent requests, with fair (first come, first served) waiting.

Configuration (``flowyard.toml``)::

    [limits."openai"]            # the whole provider
    rps = 10                     # requests per second (any 1 s window)
    rpm = 500                    # requests per minute
    smooth = true                # default: rpm also caps any 1 s at ceil(rpm / 60)
    rph = 20000                  # requests per hour
    rpd = 200000                 # requests per day
    tpm = 200000                 # tokens (prompt + max output) per minute
    concurrency = 8              # requests in flight at once

    [limits."openai/gpt-4o"]     # one model; applies on top of the provider's limits
    rpm = 100

    [limits]
    max_wait_s = 120             # optional: a call waiting longer fails with RateLimitedError
    max_retry_after = 60         # longest 429 Retry-After honoured (seconds; default 60)
    shared = "storage"           # optional: limits shared by every process (see below)
    hold_s = 600                 # shared: a dead process's slot is freed after this long

Per caller (a server gives each caller its own quota; the caller is the run's ``actor``,
see :func:`caller_keys`)::

    [limits.tenant.acme]         # caller kinds: user, key (API key id), tenant
    requests_per_minute = 60
    [limits.key."*"]             # "*": every API key gets its own limiter with these limits
    rpm = 20

A caller's limiters apply on top of the model's and the provider's, to every model it calls.
``user``, ``key`` and ``tenant`` are therefore reserved: no provider can be limited under
those names.

The long names ``requests_per_second``, ``requests_per_minute``, ``requests_per_hour``,
``requests_per_day``, ``tokens_per_minute`` and ``concurrent_requests`` are accepted too.

Algorithm: a *sliding window log* per window (at most ``rps`` requests in any 1 s, ``rpm`` in
any 60 s, ``rph`` in any 3600 s, ``rpd`` in any 86400 s, ``tpm`` tokens in any 60 s), which is
exactly what the limits promise, plus a counter of requests in flight. A per-minute window
alone lets a whole minute's requests start in the same instant (``rpm = 600``: 600 calls in
one second), which providers reject: they enforce per-minute limits over shorter intervals
(OpenAI: "60,000 requests/minute may be enforced as 1,000 requests/second"). So unless
``smooth = false``, ``rpm`` also caps every 1 s window at ``ceil(rpm / 60)`` requests (or at
``rps`` when that is lower): :attr:`RateLimits.per_second`. The sustained rate is unchanged. Waiters queue in arrival order; only
the head of the queue may take a slot, so nobody is overtaken. A cancelled waiter leaves the
queue at once and wakes the next one. :meth:`RateLimiter.pause` (after an HTTP 429 with a
retry-after) blocks the limiter until the stated time.

With ``shared`` (``"storage"``: the stack's storage; or a storage URL), the limits are kept
by a :class:`~flowyard.interfaces.SupportsSharedLimits` backend that every process using it
consults (:mod:`flowyard.llm.shared`); this module then only parses the configuration.

Libraries evaluated (2026-11): ``aiolimiter`` (leaky bucket, asyncio-only futures), ``limits``
(moving window, wall-clock ``time.time`` and background timers, no async waiting),
``pyrate-limiter`` (asyncio sleeps, no anyio/trio support). None runs on trio or accepts an
injected clock for virtual-time tests, so this module is a small implementation on anyio
primitives with a :class:`~flowyard.clock.Clock`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import anyio
import attrs

from flowyard.clock import Clock, MonotonicClock
from flowyard.errors import ConfigError

__all__ = ["RateLimits", "RateLimiter", "Permit", "LimiterSet", "LimitedCall", "CALLER_KINDS",
           "caller_keys"]

#: The kinds of caller that limits and budgets may be keyed by: the run's ``actor`` keys
#: ``user``, ``key_id`` (kind ``key``) and ``tenant``.
CALLER_KINDS: tuple[str, ...] = ("user", "key", "tenant")
_ACTOR_FIELDS = {"user": "user", "key": "key_id", "tenant": "tenant"}


def caller_keys(actor: Any) -> list[tuple[str, str]]:
    """Return the ``(kind, id)`` pairs of a run's actor, in :data:`CALLER_KINDS` order.

    flowyard-server sets the run metadata's ``actor`` at submission to
    ``{"actor": "api_key:<key id>", "tenant": "<tenant>"}`` (``"tenant:<tenant>"`` without an
    API key); an embedding application may also set ``user``, ``key_id`` and ``tenant``
    directly. ``"api_key:<id>"`` gives kind ``key``, ``"user:<name>"`` kind ``user``; other
    ``actor`` strings (``"tenant:..."``, ``"unknown"``) add nothing beyond ``tenant``.

    Args:
        actor: the run metadata's ``actor`` mapping, or None.

    Returns:
        the pairs (empty for None).

    Raises:
        TypeError: the actor is not a mapping, or one of its ids is not a non-empty string.
    """
    if actor is None:
        return []
    if not isinstance(actor, Mapping):
        raise TypeError(f"the run's actor must be a mapping (actor, tenant, user, key_id), "
                        f"got {type(actor).__name__}")
    found: dict[str, str] = {}
    said = actor.get("actor")
    if isinstance(said, str):
        prefix, _, ident = said.partition(":")
        kind = {"api_key": "key", "user": "user"}.get(prefix)
        if kind is not None and ident:
            found[kind] = ident
    for kind in CALLER_KINDS:
        value = actor.get(_ACTOR_FIELDS[kind])
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise TypeError(f"actor.{_ACTOR_FIELDS[kind]} must be a non-empty string, got "
                            f"{value!r}")
        found[kind] = value
    return [(kind, found[kind]) for kind in CALLER_KINDS if kind in found]

_EPS = 1e-9

_ALIASES = {
    "rps": "rps", "requests_per_second": "rps",
    "rpm": "rpm", "requests_per_minute": "rpm",
    "rph": "rph", "requests_per_hour": "rph",
    "rpd": "rpd", "requests_per_day": "rpd",
    "tpm": "tpm", "tokens_per_minute": "tpm",
    "concurrency": "concurrency", "concurrent_requests": "concurrency",
    "smooth": "smooth",
}

_WINDOWS = (("rpm", 60.0), ("rph", 3600.0), ("rpd", 86400.0))


def _positive_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    if int(value) <= 0:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    return int(value)


@attrs.frozen
class RateLimits:
    """Limits of one provider or model; None means unlimited.

    Args:
        rps: requests per second (any 1 s window).
        rpm: requests per minute (any 60 s window).
        rph: requests per hour (any 3600 s window).
        rpd: requests per day (any 86400 s window).
        tpm: tokens per minute (estimated prompt tokens plus maximum output tokens, corrected
            to the actual usage when the call returns).
        concurrency: requests in flight at once.
        smooth: True (default): ``rpm`` also caps every 1 s window at ``ceil(rpm / 60)``
            requests, so a minute's requests cannot start in one burst; False: ``rpm`` is a
            plain 60 s window.
    """

    rpm: int | None = None
    rph: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    rps: int | None = None
    smooth: bool = True

    @property
    def per_second(self) -> int | None:
        """The most requests admitted in any 1 s window (None: no such cap): ``rps``, and
        with ``smooth`` ``ceil(rpm / 60)``, whichever is lower.
        """
        caps = [c for c in (self.rps, math.ceil(self.rpm / 60)
                            if self.rpm is not None and self.smooth else None) if c is not None]
        return min(caps, default=None)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "limits") -> RateLimits:
        """Build limits from a configuration table.

        Raises:
            ConfigError: an unknown key, a ``smooth`` that is not true or false, or another
                value that is not a positive integer (the message names ``where`` and the key).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a table, got {data!r}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = _ALIASES.get(str(key).lower())
            if name is None:
                raise ConfigError(
                    f"{where}: unknown key {key!r}; expected one of {', '.join(sorted(_ALIASES))}")
            if name == "smooth":
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
                values[name] = value
                continue
            values[name] = _positive_int(value, f"{where}.{key}")
        return cls(**values)

    @property
    def unlimited(self) -> bool:
        """True when no limit is set."""
        return all(v is None for v in (self.rps, self.rpm, self.rph, self.rpd, self.tpm,
                                       self.concurrency))


@attrs.define(eq=False)
class _TokenEntry:
    time: float
    tokens: int
    live: bool = True


class _Waiter:
    __slots__ = ("tokens", "event")

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.event = anyio.Event()


class Permit:
    """Admission to make one call; :meth:`release` frees its concurrency slot (idempotent).

    Attributes:
        waited_s: seconds spent waiting in the queue.
    """

    __slots__ = ("_limiter", "_entry", "_released", "waited_s")

    def __init__(self, limiter: RateLimiter, entry: _TokenEntry | None, waited_s: float) -> None:
        self._limiter = limiter
        self._entry = entry
        self._released = False
        self.waited_s = waited_s

    def record_tokens(self, actual_tokens: int) -> None:
        """Replace the estimated token count with the actual usage (tokens)."""
        self._limiter._adjust(self._entry, actual_tokens)

    def release(self) -> None:
        """Free the concurrency slot. Safe to call twice."""
        if not self._released:
            self._released = True
            self._limiter._release()


class RateLimiter:
    """Fair limiter for one provider or one model.

    Args:
        limits: the limits (all None: only pauses apply).
        clock: time source (the event loop's clock by default).
        name: the provider or model reference, for messages and stats.
    """

    def __init__(self, limits: RateLimits | None = None, *, clock: Clock | None = None,
                 name: str = "") -> None:
        self.limits = limits or RateLimits()
        self.clock: Clock = clock or MonotonicClock()
        self.name = name
        self._queue: deque[_Waiter] = deque()
        self._windows: list[tuple[float, int, deque[float]]] = [
            (seconds, getattr(self.limits, key), deque())
            for key, seconds in _WINDOWS if getattr(self.limits, key) is not None
        ]
        if self.limits.per_second is not None:  # rps, or rpm smoothed
            self._windows.insert(0, (1.0, self.limits.per_second, deque()))
        self._tokens: deque[_TokenEntry] = deque()
        self._token_sum = 0
        self._in_flight = 0
        self._paused_until = -math.inf
        #: Statistics: admitted calls, calls that waited, total seconds waited.
        self.admitted = 0
        self.waited_calls = 0
        self.waited_s = 0.0

    # ------------------------------------------------------------------ state

    @property
    def in_flight(self) -> int:
        """Calls admitted and not yet released."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Callers waiting for admission."""
        return len(self._queue)

    @property
    def paused_until(self) -> float | None:
        """Clock time until which the limiter is paused, or None."""
        return None if math.isinf(self._paused_until) else self._paused_until

    def pause(self, seconds: float) -> None:
        """Admit nobody for ``seconds`` seconds from now (a provider's retry-after)."""
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"pause must be >= 0 seconds, got {seconds}")
        self._paused_until = max(self._paused_until, self.clock.now() + seconds)

    def _prune(self, now: float) -> None:
        for seconds, _limit, log in self._windows:
            while log and log[0] + seconds <= now + _EPS:
                log.popleft()
        while self._tokens and self._tokens[0].time + 60.0 <= now + _EPS:
            entry = self._tokens.popleft()
            entry.live = False
            self._token_sum -= entry.tokens

    def _delay(self, tokens: int, now: float) -> float:
        """Seconds until a call of ``tokens`` may start (inf: wait for a release)."""
        self._prune(now)
        delay = max(0.0, self._paused_until - now)
        for seconds, limit, log in self._windows:
            if len(log) >= limit:
                delay = max(delay, log[len(log) - limit] + seconds - now)
        tpm = self.limits.tpm
        if tpm is not None and self._token_sum + tokens > tpm:
            excess = self._token_sum + tokens - tpm
            freed = 0
            for entry in self._tokens:
                freed += entry.tokens
                if freed >= excess:
                    delay = max(delay, entry.time + 60.0 - now)
                    break
        if self.limits.concurrency is not None and self._in_flight >= self.limits.concurrency:
            return math.inf
        return 0.0 if delay <= _EPS else delay

    def _take(self, tokens: int, now: float) -> _TokenEntry | None:
        for _seconds, _limit, log in self._windows:
            log.append(now)
        self._in_flight += 1
        self.admitted += 1
        if self.limits.tpm is None:
            return None
        entry = _TokenEntry(now, tokens)
        self._tokens.append(entry)
        self._token_sum += tokens
        return entry

    def _wake_head(self) -> None:
        if self._queue:
            self._queue[0].event.set()

    def _release(self) -> None:
        self._in_flight -= 1
        self._wake_head()

    def _adjust(self, entry: _TokenEntry | None, actual: int) -> None:
        if entry is None or not entry.live:
            return
        actual = max(0, int(actual))
        self._token_sum += actual - entry.tokens
        entry.tokens = actual
        self._wake_head()

    # ------------------------------------------------------------------ admission

    async def acquire(self, tokens: int = 0, *, timeout: float | None = None) -> Permit:
        """Wait (first come, first served) until a call of ``tokens`` tokens may start.

        A request estimated above ``tpm`` is admitted alone, when the last 60 s hold no tokens
        (it could never fit otherwise). Cancelling the wait leaves the queue.

        Args:
            tokens: estimated tokens of the call (prompt plus maximum output).
            timeout: the most seconds to wait (None: no limit).

        Returns:
            A :class:`Permit`; call ``permit.release()`` when the call ends.

        Raises:
            TimeoutError: not admitted within ``timeout`` seconds (the place is given up).
        """
        tokens = max(0, int(tokens))
        if self.limits.tpm is not None:
            tokens = min(tokens, self.limits.tpm)
        clock = self.clock
        started = clock.now()
        if not self._queue and self._delay(tokens, started) == 0.0:
            # nobody queued and the limits allow it now: admitted without a place in the
            # queue (what the loop below does, minus its waiter and event)
            return Permit(self, self._take(tokens, started), 0.0)
        deadline = math.inf if timeout is None else started + max(0.0, timeout)
        waiter = _Waiter(tokens)
        self._queue.append(waiter)
        blocked = False
        try:
            while True:
                now = clock.now()
                if self._queue[0] is waiter:
                    delay = self._delay(tokens, now)
                    if delay == 0.0:
                        break
                else:
                    delay = math.inf
                if now >= deadline - _EPS:
                    raise TimeoutError(
                        f"rate limit {self.name!r}: not admitted within {timeout:g} s "
                        f"({len(self._queue) - 1} other caller(s) waiting)")
                blocked = True
                waiter.event = anyio.Event()
                wait = min(delay, deadline - now)
                await clock.wait(waiter.event, None if math.isinf(wait) else wait)
        except BaseException:
            was_head = bool(self._queue) and self._queue[0] is waiter
            self._queue.remove(waiter)
            if was_head:
                self._wake_head()
            raise
        self._queue.popleft()
        now = clock.now()
        entry = self._take(tokens, now)
        self._wake_head()
        waited = max(0.0, now - started) if blocked else 0.0
        if waited > 0:
            self.waited_calls += 1
            self.waited_s += waited
        return Permit(self, entry, waited)

    def stats(self) -> dict[str, Any]:
        """Return counters: admitted, waited_calls, waited_s, in_flight, queued, paused_until."""
        return {"name": self.name, "admitted": self.admitted, "waited_calls": self.waited_calls,
                "waited_s": self.waited_s, "in_flight": self._in_flight,
                "queued": len(self._queue), "paused_until": self.paused_until,
                "limits": attrs.asdict(self.limits)}


class LimitedCall:
    """The permits of one call (model limiter, then provider limiter)."""

    __slots__ = ("permits", "waited_s")

    def __init__(self, permits: list[Permit], waited_s: float) -> None:
        self.permits = permits
        self.waited_s = waited_s

    def record_tokens(self, actual_tokens: int) -> None:
        """Record the call's actual token usage in every limiter."""
        for permit in self.permits:
            permit.record_tokens(actual_tokens)

    def release(self) -> None:
        """Release every slot (idempotent)."""
        for permit in self.permits:
            permit.release()


class LimiterSet:
    """The limiters of one gateway: one per provider and one per ``provider/model`` used.

    Args:
        config: the ``[limits]`` table: keys are provider names or ``provider/model``
            references, values are tables of :class:`RateLimits` keys.
        clock: shared time source.

    Raises:
        ConfigError: a malformed table (names the key).
    """

    def __init__(self, config: Mapping[str, Any] | None = None, *,
                 clock: Clock | None = None) -> None:
        self.clock: Clock = clock or MonotonicClock()
        self.configured: dict[str, RateLimits] = {}
        #: ``"kind:id" -> limits`` of callers (``[limits.<kind>.<id>]``; id ``*``: each caller)
        self.callers: dict[str, RateLimits] = {}
        #: ``max_wait_s``: the most seconds a call waits for its limits (None: no limit).
        self.max_wait_s: float | None = None
        #: ``max_retry_after``: the longest retry-after of a 429 honoured, in seconds; a longer
        #: one does not pause the model and makes the error non-retriable.
        self.max_retry_after: float = 60.0
        #: ``shared``: None (limits in this process), ``"storage"`` (the stack's storage) or
        #: a storage URL whose backend keeps limits, breakers and budgets for every process
        #: (see :mod:`flowyard.llm.shared`).
        self.shared: str | None = None
        #: ``hold_s``: seconds after which a shared concurrency slot or budget reservation of
        #: a process that died is freed (slot) or counted as spent (reservation).
        self.hold_s: float = 600.0
        for key, table in (config or {}).items():
            if key == "shared":
                if not isinstance(table, str) or not (table == "storage" or "://" in table):
                    raise ConfigError(f"limits.shared must be \"storage\" (the stack's "
                                      f"storage) or a storage URL such as "
                                      f"\"redis://127.0.0.1:6379/0\", got {table!r}")
                self.shared = table
                continue
            if key == "hold_s":
                if (isinstance(table, bool) or not isinstance(table, (int, float))
                        or not 0 < table < math.inf):
                    raise ConfigError(f"limits.hold_s must be a number of seconds > 0, got "
                                      f"{table!r}")
                self.hold_s = float(table)
                continue
            if key == "max_retry_after":
                if (isinstance(table, bool) or not isinstance(table, (int, float))
                        or not 0 <= table < math.inf):
                    raise ConfigError(f"limits.max_retry_after must be a number of seconds "
                                      f">= 0, got {table!r}")
                self.max_retry_after = float(table)
                continue
            if key == "max_wait_s":
                if isinstance(table, bool) or not isinstance(table, (int, float)) or table < 0:
                    raise ConfigError(f"limits.max_wait_s must be a number of seconds >= 0, "
                                      f"got {table!r}")
                self.max_wait_s = float(table)
                continue
            if not isinstance(table, Mapping):
                raise ConfigError(f"limits.{key!r} must be a table of limits (rps, rpm, rph, "
                                  f"rpd, tpm, concurrency, smooth), got {table!r}")
            if key in CALLER_KINDS:
                for ident, limits in table.items():
                    where = f"limits.{key}.{ident!r}"
                    self.callers[f"{key}:{ident}"] = RateLimits.from_mapping(limits,
                                                                             where=where)
                continue
            self.configured[str(key)] = RateLimits.from_mapping(table, where=f"limits.{key!r}")
        self._limiters: dict[str, RateLimiter] = {}

    def limiter(self, key: str) -> RateLimiter:
        """Return the limiter of a provider name or a model reference (made on first use)."""
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = RateLimiter(self.configured.get(key), clock=self.clock, name=key)
            self._limiters[key] = limiter
        return limiter

    def caller_limiter(self, kind: str, ident: str) -> RateLimiter | None:
        """Return the limiter of one caller (``[limits.<kind>.<ident>]``, else
        ``[limits.<kind>."*"]``: each caller its own), or None when neither is configured.

        Args:
            kind: one of :data:`CALLER_KINDS`.
            ident: the caller's id.

        Returns:
            the limiter (made on first use), or None.
        """
        key = f"{kind}:{ident}"
        limiter = self._limiters.get(key)
        if limiter is None:
            limits = self.callers.get(key) or self.callers.get(f"{kind}:*")
            if limits is None:
                return None
            limiter = RateLimiter(limits, clock=self.clock, name=key)
            self._limiters[key] = limiter
        return limiter

    async def acquire(self, provider: str, model: str, tokens: int = 0,
                      callers: list[tuple[str, str]] | tuple[()] = ()) -> LimitedCall:
        """Wait for the callers' limiters, then the model's, then the provider's; return the
        permits.

        The order is fixed (callers in :data:`CALLER_KINDS` order, model, provider), so two
        calls never hold each other's slots. All waits together last at most
        :attr:`max_wait_s` seconds.

        Args:
            provider: the provider name.
            model: the model id.
            tokens: the tokens the call may use (for ``tpm``).
            callers: ``(kind, id)`` pairs of the caller (:func:`caller_keys`); only the
                configured ones have limiters.

        Returns:
            the permits, with the total wait.

        Raises:
            TimeoutError: not admitted within ``max_wait_s``.
        """
        started = self.clock.now()
        limiters = [limiter for kind, ident in callers
                    if (limiter := self.caller_limiter(kind, ident)) is not None] if callers else []
        limiters.append(self.limiter(f"{provider}/{model}"))
        limiters.append(self.limiter(provider))
        permits: list[Permit] = []
        try:
            for limiter in limiters:
                rest = (None if self.max_wait_s is None
                        else max(0.0, self.max_wait_s - (self.clock.now() - started)))
                permits.append(await limiter.acquire(tokens, timeout=rest))
        except BaseException:
            for permit in permits:
                permit.release()
            raise
        return LimitedCall(permits, sum(p.waited_s for p in permits))

    def pause(self, provider: str, model: str | None, seconds: float) -> str:
        """Pause the model's limiter (or the provider's when ``model`` is None) for
        ``seconds``; return the key paused.
        """
        key = f"{provider}/{model}" if model else provider
        self.limiter(key).pause(seconds)
        return key

    def stats(self) -> dict[str, dict[str, Any]]:
        """Return each limiter's :meth:`RateLimiter.stats` by key."""
        return {key: limiter.stats() for key, limiter in sorted(self._limiters.items())}
