"""Circuit breakers per provider: stop calling a provider that keeps failing.

After ``failure_threshold`` consecutive failures the breaker *opens*: calls fail at once with
:class:`~flowyard.errors.CircuitOpenError` for ``cooldown_s`` seconds. Then it is *half open*:
exactly one call (the probe) goes through while the others keep failing fast. A successful
probe *closes* the breaker; a failed one opens it for another cooldown.

Failures are provider errors that say the provider is unhealthy: retriable ones (server
errors, timeouts, malformed or cut responses). Rate limiting (HTTP 429) is handled by the rate
limiter's pause instead, and caller errors (bad request, authentication) do not count.

Configuration (``flowyard.toml``)::

    [circuit]
    failure_threshold = 5    # consecutive failures that open the breaker
    cooldown_s = 30          # seconds before the probe
    enabled = true

    [circuit."openai"]       # per-provider overrides
    failure_threshold = 3

With ``[limits] shared`` the breakers' state lives in the shared backend, so a breaker opened
by one process is open in all (:mod:`flowyard.llm.shared`); these settings still apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from flowyard.clock import Clock, MonotonicClock
from flowyard.errors import CircuitOpenError, ConfigError, ProviderError, RateLimitedError

__all__ = ["CircuitBreaker", "BreakerSet", "counts_as_failure"]

State = Literal["closed", "open", "half_open"]


def counts_as_failure(exc: BaseException) -> bool:
    """True when ``exc`` says the provider is unhealthy (a retriable provider error other
    than a rate limit or an open circuit).
    """
    return (isinstance(exc, ProviderError) and exc.retriable
            and not isinstance(exc, (RateLimitedError, CircuitOpenError)))


class CircuitBreaker:
    """The breaker of one provider.

    Args:
        name: the provider name.
        failure_threshold: consecutive failures that open the breaker (>= 1).
        cooldown_s: seconds the breaker stays open before one probe call (> 0).
        clock: time source.
        on_change: called as ``on_change(name, old_state, new_state)`` on every transition.
    """

    def __init__(self, name: str, *, failure_threshold: int = 5, cooldown_s: float = 30.0,
                 clock: Clock | None = None,
                 on_change: Callable[[str, State, State], None] | None = None) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if cooldown_s <= 0:
            raise ValueError(f"cooldown_s must be > 0 seconds, got {cooldown_s}")
        self.name = name
        self.failure_threshold = failure_threshold
        self.cooldown_s = float(cooldown_s)
        self.clock: Clock = clock or MonotonicClock()
        self.on_change = on_change
        self.state: State = "closed"
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self._probe_in_flight = False
        #: Calls refused while open.
        self.rejected = 0

    def _move(self, new: State) -> None:
        old, self.state = self.state, new
        if old != new and self.on_change is not None:
            self.on_change(self.name, old, new)

    def check(self) -> None:
        """Fail fast, without changing state, while the breaker is open and cooling down (the
        gateway asks this before queueing for a rate limit).

        Raises:
            CircuitOpenError: open and the cooldown has not passed.
        """
        if self.state == "open" and self.opened_at is not None:
            wait = self.opened_at + self.cooldown_s - self.clock.now()
            if wait > 0:
                self.rejected += 1
                raise CircuitOpenError(
                    f"circuit of provider {self.name!r} is open after "
                    f"{self.consecutive_failures} consecutive failures; next probe in "
                    f"{wait:.1f} s", provider=self.name)

    def before_call(self) -> bool:
        """Ask to make a call. Returns True when this call is the half-open probe.

        Raises:
            CircuitOpenError: the breaker is open (or a probe is already in flight); the
                message says how long until the probe.
        """
        if self.state == "closed":
            return False
        now = self.clock.now()
        if self.state == "open":
            assert self.opened_at is not None
            wait = self.opened_at + self.cooldown_s - now
            if wait > 0:
                self.rejected += 1
                raise CircuitOpenError(
                    f"circuit of provider {self.name!r} is open after "
                    f"{self.consecutive_failures} consecutive failures; next probe in "
                    f"{wait:.1f} s", provider=self.name)
            self._move("half_open")
        if self._probe_in_flight:
            self.rejected += 1
            raise CircuitOpenError(
                f"circuit of provider {self.name!r} is half open and its probe call is in "
                "flight", provider=self.name)
        self._probe_in_flight = True
        return True

    def on_success(self, probe: bool) -> None:
        """Record a call that reached a healthy provider."""
        if probe:
            self._probe_in_flight = False
        self.consecutive_failures = 0
        self.opened_at = None
        self._move("closed")

    def on_failure(self, probe: bool) -> None:
        """Record a failed call (see :func:`counts_as_failure`)."""
        if probe:
            self._probe_in_flight = False
        self.consecutive_failures += 1
        if probe or self.consecutive_failures >= self.failure_threshold:
            self.opened_at = self.clock.now()
            self._move("open")

    def on_abort(self, probe: bool) -> None:
        """Record a call that ended without an answer either way (cancelled): a probe's
        place is freed for the next caller.
        """
        if probe:
            self._probe_in_flight = False

    def snapshot(self) -> dict[str, Any]:
        """Return the state as a JSON-ready dict."""
        return {"provider": self.name, "state": self.state,
                "consecutive_failures": self.consecutive_failures,
                "opened_at": self.opened_at, "rejected": self.rejected,
                "failure_threshold": self.failure_threshold, "cooldown_s": self.cooldown_s}


class BreakerSet:
    """One breaker per provider, configured from the ``[circuit]`` table.

    Raises:
        ConfigError: an unknown key or an invalid value (names the key).
    """

    _KEYS = {"failure_threshold", "cooldown_s", "enabled"}

    def __init__(self, config: Mapping[str, Any] | None = None, *, clock: Clock | None = None,
                 on_change: Callable[[str, State, State], None] | None = None) -> None:
        self.clock: Clock = clock or MonotonicClock()
        self.on_change = on_change
        config = dict(config or {})
        self.defaults = self._settings({k: v for k, v in config.items()
                                        if not isinstance(v, Mapping)}, "circuit")
        self.overrides = {
            str(k): {**self.defaults, **self._settings(v, f"circuit.{k!r}")}
            for k, v in config.items() if isinstance(v, Mapping)
        }
        self._breakers: dict[str, CircuitBreaker] = {}

    @classmethod
    def _settings(cls, table: Mapping[str, Any], where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in table.items():
            if key not in cls._KEYS:
                raise ConfigError(f"{where}: unknown key {key!r}; expected one of "
                                  f"{', '.join(sorted(cls._KEYS))}")
            if key == "enabled":
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}.enabled must be true or false, got {value!r}")
            elif key == "failure_threshold":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"{where}.failure_threshold must be an integer >= 1, "
                                      f"got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{where}.cooldown_s must be a number of seconds > 0, "
                                  f"got {value!r}")
            out[key] = value
        return out

    def breaker(self, provider: str) -> CircuitBreaker | None:
        """Return the provider's breaker (None when disabled for it)."""
        breaker = self._breakers.get(provider)
        if breaker is None:
            settings = self.overrides.get(provider, self.defaults)
            if not settings.get("enabled", True):
                return None
            breaker = CircuitBreaker(
                provider, failure_threshold=int(settings.get("failure_threshold", 5)),
                cooldown_s=float(settings.get("cooldown_s", 30.0)), clock=self.clock,
                on_change=self.on_change)
            self._breakers[provider] = breaker
        return breaker

    def settings(self, provider: str) -> tuple[int, float] | None:
        """Return the provider's ``(failure_threshold, cooldown_s)``, or None when its
        breaker is disabled; read-only (for the shared breakers of
        :mod:`flowyard.llm.shared`).

        Args:
            provider: the provider name.

        Returns:
            the consecutive failures that open it and the seconds it stays open, or None.
        """
        settings = self.overrides.get(provider, self.defaults)
        if not settings.get("enabled", True):
            return None
        return (int(settings.get("failure_threshold", 5)),
                float(settings.get("cooldown_s", 30.0)))

    def enabled(self, provider: str) -> bool:
        """Return whether the provider's calls go through a breaker (``enabled`` of its
        ``[circuit]`` settings); read-only: no breaker is made.

        Args:
            provider: the provider name.

        Returns:
            False when ``[circuit]`` (or its table for the provider) says ``enabled = false``.
        """
        return bool(self.overrides.get(provider, self.defaults).get("enabled", True))

    def peek(self, provider: str) -> CircuitBreaker | None:
        """Return the provider's breaker when one exists, without making one (unlike
        :meth:`breaker`, which makes it on first use): for dashboards and health checks that
        must not change what they look at.

        Args:
            provider: the provider name.

        Returns:
            The breaker, or None when no call to the provider went through a breaker yet (the
            state is then closed with no failures) or breakers are disabled for it.
        """
        return self._breakers.get(provider)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Return every breaker's state by provider."""
        return {name: b.snapshot() for name, b in sorted(self._breakers.items())}
