"""Rate limits, circuit breakers and budget reservations shared by every process using one
database: :class:`SharedLimitsMixin` implements the core's
:class:`~flowyard.SupportsSharedLimits` for :class:`flowyard_sql.SQLStorage` (tables of
migration 0009).

Tables:

* ``fy_rate_keys`` (``key``, ``paused_until``): one row per limiter key, its pause;
* ``fy_rate_events`` (``key``, ``permit_id``, ``at``, ``tokens``, ``hold_until``): one row per
  admitted call, kept while any window may count it; ``hold_until`` is when its concurrency
  slot frees itself (NULL once released);
* ``fy_breakers`` (``key``, ``state``, ``failures``, ``reopens_at``, ``probe_at``);
* ``fy_budgets`` (``key``, ``spent_usd``) and ``fy_budget_holds`` (``reservation_id``,
  ``key``, ``amount_usd``, ``expires_at``): what is spent, and what each reservation holds in
  each budget until it is settled or expires (then it is added to ``spent_usd``).

Every operation that changes state is one write transaction (``SQLStorage._write``) that
reads and decides under a lock, so it is atomic across processes:

* PostgreSQL: the transaction first takes a transaction-scoped advisory lock
  (``pg_advisory_xact_lock``): per key for rate limits and breakers (``hashtext(key)``: two
  keys that collide merely share a lock), one lock for all budgets (a reservation spans
  several budgets; one lock cannot deadlock). Statements after it see what the previous
  holder committed (READ COMMITTED). Times are the server's ``clock_timestamp()``, read
  after the lock, so every process agrees on them.
* SQLite: the transaction runs inside ``BEGIN IMMEDIATE`` (the database's write lock from its
  start); times are this host's ``time.time()`` (every process using the file runs on it).

Reads that change nothing (a breaker's ``check``, a closed breaker's ``before_call``, a
budget's state) are plain reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from flowyard_sql.schema import metadata

if TYPE_CHECKING:
    from flowyard_sql.storage import _Exec

__all__ = ["SharedLimitsMixin", "CONCURRENCY_POLL_S", "rate_keys", "rate_events", "breakers",
           "budgets", "budget_holds"]

#: Seconds a caller is asked to wait when only a concurrency limit is full.
CONCURRENCY_POLL_S = 0.02
_EPS = 1e-9
_BREAKER_EVENTS = ("check", "before_call", "success", "failure", "abort")
#: Namespaces (first argument) of the PostgreSQL advisory locks ("fyra", "fybr", "fybu").
_NS_RATE, _NS_BREAKER, _NS_BUDGET = 0x66797261, 0x66796272, 0x66796275

rate_keys = sa.Table(
    "fy_rate_keys", metadata,
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("paused_until", sa.Float(), nullable=True),
)
rate_events = sa.Table(
    "fy_rate_events", metadata,
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("permit_id", sa.String(), primary_key=True),
    sa.Column("at", sa.Float(), nullable=False),
    sa.Column("tokens", sa.BigInteger(), nullable=False),
    sa.Column("hold_until", sa.Float(), nullable=True),
    sa.Index("ix_fy_rate_events_key_at", "key", "at"),
)
breakers = sa.Table(
    "fy_breakers", metadata,
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("state", sa.String(), nullable=False),
    sa.Column("failures", sa.Integer(), nullable=False),
    sa.Column("reopens_at", sa.Float(), nullable=True),
    sa.Column("probe_at", sa.Float(), nullable=True),
)
budgets = sa.Table(
    "fy_budgets", metadata,
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("spent_usd", sa.Float(), nullable=False),
)
budget_holds = sa.Table(
    "fy_budget_holds", metadata,
    sa.Column("reservation_id", sa.String(), primary_key=True),
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("amount_usd", sa.Float(), nullable=False),
    sa.Column("expires_at", sa.Float(), nullable=False),
    sa.Index("ix_fy_budget_holds_key", "key", "expires_at"),
)


class _Statements:
    """Built once per process (the raw SQLite writer caches compiled statements by ``id()``).

    Every parameter is named ``b_*``: the raw writer binds exactly the parameters given.
    """

    def __init__(self) -> None:
        t = sa.text
        self.pg_now = t("SELECT EXTRACT(EPOCH FROM clock_timestamp())")
        self.pg_lock = t("SELECT pg_advisory_xact_lock(:b_ns, hashtext(:b_key))")
        # rate limits
        self.key_row = t("INSERT INTO fy_rate_keys (key, paused_until) VALUES (:b_key, NULL) "
                         "ON CONFLICT (key) DO NOTHING")
        self.pause = t("UPDATE fy_rate_keys SET paused_until = :b_until WHERE key = :b_key "
                       "AND (paused_until IS NULL OR paused_until < :b_until)")
        # one round trip: admitted before?, the newest admission, the pause
        self.rate_state = t(
            "SELECT (SELECT 1 FROM fy_rate_events WHERE key = :b_key AND permit_id = "
            ":b_permit), (SELECT MAX(at) FROM fy_rate_events WHERE key = :b_key), "
            "(SELECT paused_until FROM fy_rate_keys WHERE key = :b_key)")
        self.prune = t("DELETE FROM fy_rate_events WHERE key = :b_key AND at <= :b_before "
                       "AND (hold_until IS NULL OR hold_until <= :b_now)")
        #: windows -> the statement counting them in one round trip (see _counts)
        self.counts: dict[int, Any] = {}
        self.nth = t("SELECT at FROM fy_rate_events WHERE key = :b_key AND at > :b_since "
                     "ORDER BY at DESC LIMIT 1 OFFSET :b_offset")
        self.tokens_free_at = t(
            "SELECT at FROM (SELECT at, SUM(tokens) OVER (ORDER BY at, permit_id ROWS "
            "UNBOUNDED PRECEDING) AS freed FROM fy_rate_events WHERE key = :b_key "
            "AND at > :b_since) AS w WHERE freed >= :b_excess ORDER BY at LIMIT 1")
        self.admit = t("INSERT INTO fy_rate_events (key, permit_id, at, tokens, hold_until) "
                       "VALUES (:b_key, :b_permit, :b_at, :b_tokens, :b_hold)")
        self.release = t("UPDATE fy_rate_events SET hold_until = NULL WHERE key = :b_key "
                         "AND permit_id = :b_permit")
        self.release_tokens = t("UPDATE fy_rate_events SET hold_until = NULL, tokens = "
                                ":b_tokens WHERE key = :b_key AND permit_id = :b_permit")
        # breakers
        self.breaker = t("SELECT state, failures, reopens_at, probe_at FROM fy_breakers "
                         "WHERE key = :b_key")
        self.breaker_put = t(
            "INSERT INTO fy_breakers (key, state, failures, reopens_at, probe_at) VALUES "
            "(:b_key, :b_state, :b_failures, :b_reopens, :b_probe) ON CONFLICT (key) DO "
            "UPDATE SET state = excluded.state, failures = excluded.failures, "
            "reopens_at = excluded.reopens_at, probe_at = excluded.probe_at")
        # budgets
        self.held_by = t("SELECT COUNT(*) FROM fy_budget_holds "
                         "WHERE reservation_id = :b_rid")
        self.budget_row = t("INSERT INTO fy_budgets (key, spent_usd) VALUES (:b_key, 0) "
                            "ON CONFLICT (key) DO NOTHING")
        self.expired_sum = t("SELECT COALESCE(SUM(amount_usd), 0), COUNT(*) FROM "
                             "fy_budget_holds WHERE key = :b_key AND expires_at <= :b_now")
        self.expired_drop = t("DELETE FROM fy_budget_holds WHERE key = :b_key "
                              "AND expires_at <= :b_now")
        self.spend = t("UPDATE fy_budgets SET spent_usd = spent_usd + :b_usd "
                       "WHERE key = :b_key")
        self.spent = t("SELECT spent_usd FROM fy_budgets WHERE key = :b_key")
        self.reserved = t("SELECT COALESCE(SUM(amount_usd), 0) FROM fy_budget_holds "
                          "WHERE key = :b_key AND expires_at > :b_now")
        self.hold = t("INSERT INTO fy_budget_holds (reservation_id, key, amount_usd, "
                      "expires_at) VALUES (:b_rid, :b_key, :b_usd, :b_expires)")
        self.settle_live = t(
            "UPDATE fy_budgets SET spent_usd = spent_usd + :b_usd WHERE key IN (SELECT key "
            "FROM fy_budget_holds WHERE reservation_id = :b_rid AND expires_at > :b_now)")
        self.settle_expired = t(
            "UPDATE fy_budgets SET spent_usd = spent_usd + (SELECT COALESCE(SUM(h.amount_usd), "
            "0) FROM fy_budget_holds h WHERE h.key = fy_budgets.key AND h.reservation_id = "
            ":b_rid AND h.expires_at <= :b_now) WHERE key IN (SELECT key FROM fy_budget_holds "
            "WHERE reservation_id = :b_rid AND expires_at <= :b_now)")
        self.settle_drop = t("DELETE FROM fy_budget_holds WHERE reservation_id = :b_rid")


_SQL = _Statements()


def _counts(windows: int) -> Any:
    """The statement that counts, in one round trip, the admissions of each of ``windows``
    windows (``:b_s0``, ``:b_s1``, ... their starts), the tokens of the last 60 s
    (``:b_t``) and the slots held at ``:b_now``. Built once per number of windows (the raw
    SQLite writer caches compiled statements by ``id()``).
    """
    stmt = _SQL.counts.get(windows)
    if stmt is None:
        parts = [f"COALESCE(SUM(CASE WHEN at > :b_s{i} THEN 1 ELSE 0 END), 0)"
                 for i in range(windows)]
        parts += ["COALESCE(SUM(CASE WHEN at > :b_t THEN tokens ELSE 0 END), 0)",
                  "COALESCE(SUM(CASE WHEN hold_until > :b_now THEN 1 ELSE 0 END), 0)"]
        # setdefault: a statement built twice at once is used only in its first copy
        stmt = _SQL.counts.setdefault(windows, sa.text(
            f"SELECT {', '.join(parts)} FROM fy_rate_events WHERE key = :b_key"))
    return stmt


def _finite(value: Any, what: str, *, low: float, strict: bool = False) -> float:
    """Return ``value`` as a float after checking it is finite and ``>= low`` (``> low``
    when ``strict``).

    Raises:
        ValueError: not a number, not finite, or out of range (names ``what``).
    """
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)
            or math.isinf(value) or value < low or (strict and value == low)):
        raise ValueError(f"{what} must be a finite number {'>' if strict else '>='} {low:g}, "
                         f"got {value!r}")
    return float(value)


def _count(value: Any, what: str, *, low: int = 1) -> int:
    """Return ``value`` after checking it is an integer ``>= low``.

    Raises:
        ValueError: not an integer, or below ``low`` (names ``what``).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    return value


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


class SharedLimitsMixin:
    """:class:`~flowyard.SupportsSharedLimits` on the tables of migration 0009 (see the
    module docstring for the locking and the clock).
    """

    if TYPE_CHECKING:
        dialect: str

        async def _write(self, fn: Any) -> Any: ...
        async def _call(self, fn: Any, *args: Any) -> Any: ...
        def _read(self) -> Any: ...

    def _locked_now(self, ex: _Exec, ns: int, key: str) -> float:
        """Take the PostgreSQL advisory lock ``(ns, key)`` and return the backend time after
        it (SQLite: already serialised by ``BEGIN IMMEDIATE``; this host's clock).
        """
        if self.dialect == "postgresql":
            ex.first(_SQL.pg_lock, {"b_ns": ns, "b_key": key})
            found = ex.first(_SQL.pg_now, {})
            assert found is not None
            return float(found[0])
        return time.time()

    # ------------------------------------------------------------------ rate limits

    async def shared_rate_acquire(self, key: str, *, permit_id: str,
                                  windows: Sequence[tuple[float, int]], tokens: int = 0,
                                  tpm: int | None = None, concurrency: int | None = None,
                                  hold_s: float = 600.0) -> float:
        """Admit one call under ``key`` if every limit allows it now, in one transaction.

        Args:
            key: the limiter's key.
            permit_id: the caller's id for this admission.
            windows: ``(seconds, most requests)`` sliding windows.
            tokens: estimated tokens of the call, counted against ``tpm`` over 60 s.
            tpm: tokens per minute (None: unlimited).
            concurrency: calls in flight at once (None: unlimited).
            hold_s: seconds after which an unreleased permit frees its slot.

        Returns:
            0.0 when admitted (also for a ``permit_id`` admitted before); otherwise the
            seconds to wait before asking again (> 0; :data:`CONCURRENCY_POLL_S` when only
            the concurrency limit is full).

        Raises:
            ValueError: a number out of range (nothing is written).
            StorageError: the database failed.
        """
        checked = [(_finite(s, "window seconds", low=0.0, strict=True),
                    _count(n, "window limit")) for s, n in windows]
        tokens = _count(tokens, "tokens", low=0)
        if tpm is not None:
            tokens = min(tokens, _count(tpm, "tpm"))
        if concurrency is not None:
            concurrency = _count(concurrency, "concurrency")
        hold_s = _finite(hold_s, "hold_s", low=0.0, strict=True)
        horizon = max([60.0, *(s for s, _ in checked)])

        counts = _counts(len(checked))

        def acquire(ex: _Exec) -> float:
            now = self._locked_now(ex, _NS_RATE, key)
            state = ex.first(_SQL.rate_state, {"b_key": key, "b_permit": permit_id})
            assert state is not None
            if state[0] is not None:
                return 0.0
            if state[1] is not None:
                now = max(now, float(state[1]))  # a clock that stepped back: keep order
            delay = 0.0 if state[2] is None else max(0.0, float(state[2]) - now)
            ex.execute(_SQL.prune, {"b_key": key, "b_before": now - horizon, "b_now": now})
            params: dict[str, Any] = {f"b_s{i}": now - seconds + _EPS
                                      for i, (seconds, _) in enumerate(checked)}
            params.update(b_key=key, b_t=now - 60.0 + _EPS, b_now=now)
            found = ex.first(counts, params)
            assert found is not None
            for i, (seconds, limit) in enumerate(checked):
                if int(found[i]) >= limit:
                    nth = ex.first(_SQL.nth, {"b_key": key, "b_since": params[f"b_s{i}"],
                                              "b_offset": limit - 1})
                    if nth is not None:
                        delay = max(delay, float(nth[0]) + seconds - now)
            used = int(found[len(checked)])
            if tpm is not None and used and used + tokens > tpm:
                free = ex.first(_SQL.tokens_free_at, {"b_key": key, "b_since": params["b_t"],
                                                      "b_excess": used + tokens - tpm})
                if free is not None:
                    delay = max(delay, float(free[0]) + 60.0 - now)
            if concurrency is not None and int(found[len(checked) + 1]) >= concurrency:
                delay = max(delay, CONCURRENCY_POLL_S)
            if delay > _EPS:
                return max(delay, 1e-3)
            ex.execute(_SQL.admit, {"b_key": key, "b_permit": permit_id, "b_at": now,
                                    "b_tokens": tokens, "b_hold": now + hold_s})
            return 0.0

        return float(await self._write(acquire))

    async def shared_rate_release(self, key: str, permit_id: str, *,
                                  actual_tokens: int | None = None) -> None:
        """Free the permit's concurrency slot and, when given, record ``actual_tokens``.
        Idempotent; an unknown or expired permit is ignored.

        Raises:
            ValueError: ``actual_tokens`` is negative.
            StorageError: the database failed.
        """
        params: dict[str, Any] = {"b_key": key, "b_permit": permit_id}
        stmt = _SQL.release
        if actual_tokens is not None:
            params["b_tokens"] = _count(actual_tokens, "actual_tokens", low=0)
            stmt = _SQL.release_tokens

        def release(ex: _Exec) -> None:
            ex.execute(stmt, params)

        await self._write(release)

    async def shared_rate_pause(self, key: str, seconds: float) -> None:
        """Admit nobody under ``key`` for ``seconds`` (>= 0) from now; a longer pause stays.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
            StorageError: the database failed.
        """
        seconds = _finite(seconds, "pause seconds", low=0.0)

        def pause(ex: _Exec) -> None:
            now = self._locked_now(ex, _NS_RATE, key)
            ex.execute(_SQL.key_row, {"b_key": key})
            ex.execute(_SQL.pause, {"b_key": key, "b_until": now + seconds})

        await self._write(pause)

    # ------------------------------------------------------------------ breakers

    async def shared_breaker(self, key: str, *, event: str, threshold: int,
                             cooldown_s: float) -> tuple[str, float | None]:
        """Read or update the breaker ``key`` (see
        :meth:`flowyard.SupportsSharedLimits.shared_breaker`). ``check``, and
        ``before_call``/``success`` on a closed breaker without failures, are plain reads.

        Returns:
            ``(state, reopens_at)``.

        Raises:
            ValueError: an unknown ``event``, ``threshold`` < 1 or ``cooldown_s`` <= 0.
            StorageError: the database failed.
        """
        if event not in _BREAKER_EVENTS:
            raise ValueError(f"breaker event must be one of {', '.join(_BREAKER_EVENTS)}, "
                             f"got {event!r}")
        threshold = _count(threshold, "threshold")
        cooldown_s = _finite(cooldown_s, "cooldown_s", low=0.0, strict=True)
        postgres = self.dialect == "postgresql"

        def read() -> tuple[Any, ...] | None:
            with self._read() as conn:
                row = conn.execute(_SQL.breaker, {"b_key": key}).first()
                now = (float(conn.execute(_SQL.pg_now).scalar_one()) if postgres
                       else time.time())
            return None if row is None else (*tuple(row), now)

        if event in ("check", "before_call", "success", "abort"):
            row = await self._call(read)
            if row is None or (row[0] == "closed" and (event != "success" or row[1] == 0)):
                return ("closed", None)
            if event == "check":
                state, _, reopens, _, now = row
                if state == "open" and (reopens is None or now >= reopens):
                    return ("half_open", None)
                return (state, _float(reopens) if state == "open" else None)

        def update(ex: _Exec) -> tuple[str, float | None]:
            now = self._locked_now(ex, _NS_BREAKER, key)
            row = ex.first(_SQL.breaker, {"b_key": key})
            state, failures, reopens, probe = (("closed", 0, None, None) if row is None
                                               else (str(row[0]), int(row[1]),
                                                     _float(row[2]), _float(row[3])))
            result: tuple[str, float | None]
            if event == "before_call":
                if state == "closed":
                    return ("closed", None)
                if state == "open" and reopens is not None and now < reopens:
                    return ("open", reopens)
                if state == "half_open" and probe is not None and now < probe + cooldown_s:
                    return ("half_open", None)
                state, probe, result = "half_open", now, ("probe", None)
            elif event == "success":
                state, failures, reopens, probe = "closed", 0, None, None
                result = ("closed", None)
            elif event == "failure":
                failures += 1
                if state == "half_open" or failures >= threshold:
                    state, reopens, probe = "open", now + cooldown_s, None
                result = (state, reopens if state == "open" else None)
            else:  # abort: a probe ended without an outcome
                if state != "half_open":
                    return (state, reopens if state == "open" else None)
                state, probe = "open", None
                result = ("open", reopens)
            ex.execute(_SQL.breaker_put, {"b_key": key, "b_state": state,
                                          "b_failures": failures, "b_reopens": reopens,
                                          "b_probe": probe})
            return result

        return await self._write(update)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ budgets

    async def shared_budget_reserve(self, reservation_id: str,
                                    budgets: Sequence[tuple[str, float]], amount_usd: float,
                                    *, hold_s: float = 600.0) -> tuple[str, float, float] | None:
        """Hold ``amount_usd`` in every budget, all or none, in one transaction.

        Args:
            reservation_id: the caller's id for the reservation.
            budgets: ``(key, limit in US dollars)`` pairs.
            amount_usd: the amount to hold (>= 0).
            hold_s: seconds after which an unsettled reservation counts as spent.

        Returns:
            None when held (also for a ``reservation_id`` held before); otherwise
            ``(key, spent_usd, reserved_usd)`` of the first budget that could not cover it.

        Raises:
            ValueError: a number out of range (nothing is written).
            StorageError: the database failed.
        """
        amount_usd = _finite(amount_usd, "amount_usd", low=0.0)
        checked = [(key, _finite(limit, f"limit of budget {key!r}", low=0.0))
                   for key, limit in budgets]
        hold_s = _finite(hold_s, "hold_s", low=0.0, strict=True)
        keys = list(dict.fromkeys(key for key, _ in checked))

        def reserve(ex: _Exec) -> tuple[str, float, float] | None:
            now = self._locked_now(ex, _NS_BUDGET, "")
            held = ex.first(_SQL.held_by, {"b_rid": reservation_id})
            if held is not None and int(held[0]) > 0:
                return None
            state: dict[str, tuple[float, float]] = {}
            for key in keys:
                ex.execute(_SQL.budget_row, {"b_key": key})
                expired = ex.first(_SQL.expired_sum, {"b_key": key, "b_now": now})
                if expired is not None and int(expired[1]) > 0:
                    ex.execute(_SQL.spend, {"b_key": key, "b_usd": float(expired[0])})
                    ex.execute(_SQL.expired_drop, {"b_key": key, "b_now": now})
                spent = ex.first(_SQL.spent, {"b_key": key})
                reserved = ex.first(_SQL.reserved, {"b_key": key, "b_now": now})
                state[key] = (float(spent[0]) if spent else 0.0,
                              float(reserved[0]) if reserved else 0.0)
            for key, limit in checked:
                spent_usd, reserved_usd = state[key]
                if spent_usd + reserved_usd + amount_usd > limit + 1e-12:
                    return (key, spent_usd, reserved_usd)
            for key in keys:
                ex.execute(_SQL.hold, {"b_rid": reservation_id, "b_key": key,
                                       "b_usd": amount_usd, "b_expires": now + hold_s})
            return None

        return await self._write(reserve)  # type: ignore[no-any-return]

    async def shared_budget_settle(self, reservation_id: str, actual_usd: float | None
                                   ) -> None:
        """Replace the reservation's held amount with ``actual_usd`` (None: nothing spent)
        in every budget where it is still held; where it expired, its held amount is spent.
        Idempotent.

        Raises:
            ValueError: ``actual_usd`` is negative or not finite.
            StorageError: the database failed.
        """
        if actual_usd is not None:
            actual_usd = _finite(actual_usd, "actual_usd", low=0.0)

        def settle(ex: _Exec) -> None:
            now = self._locked_now(ex, _NS_BUDGET, "")
            if actual_usd:
                ex.execute(_SQL.settle_live, {"b_rid": reservation_id, "b_usd": actual_usd,
                                              "b_now": now})
            ex.execute(_SQL.settle_expired, {"b_rid": reservation_id, "b_now": now})
            ex.execute(_SQL.settle_drop, {"b_rid": reservation_id})

        await self._write(settle)

    async def shared_budget_state(self, key: str) -> dict[str, float]:
        """Return ``{"spent_usd", "reserved_usd"}`` of budget ``key`` in US dollars (zeros for
        an unknown key); a reservation past its ``hold_s`` counts as spent.

        Raises:
            StorageError: the database failed.
        """
        postgres = self.dialect == "postgresql"

        def read() -> dict[str, float]:
            with self._read() as conn:
                now = (float(conn.execute(_SQL.pg_now).scalar_one()) if postgres
                       else time.time())
                spent = conn.execute(_SQL.spent, {"b_key": key}).scalar()
                expired = conn.execute(_SQL.expired_sum, {"b_key": key, "b_now": now}).first()
                reserved = conn.execute(_SQL.reserved, {"b_key": key, "b_now": now}).scalar()
            return {"spent_usd": float(spent or 0.0) + float(expired[0] if expired else 0.0),
                    "reserved_usd": float(reserved or 0.0)}

        return await self._call(read)  # type: ignore[no-any-return]
