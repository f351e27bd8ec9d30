"""Shared rate limits, circuit breakers and budget reservations on Redis
(:class:`flowyard.SupportsSharedLimits`), mixed into
:class:`~flowyard_redis.storage.RedisStorage`.

Each operation is one Lua script, so it is atomic across every process using the Redis
server, and reads the time from Redis (``TIME``), so processes on machines with skewed
clocks agree. The semantics follow the core's in-memory reference implementation
(``MemoryStorage``) step by step.

Keys (``P`` is the storage's prefix; ``<key>`` is the gateway's opaque key, used as it is:
Redis keys are binary-safe):

* ``P lim:rlog:<key>`` (zset permit -> admission time), ``P lim:rtok:<key>`` (hash permit ->
  tokens), ``P lim:rhold:<key>`` (zset permit -> hold expiry), ``P lim:rmeta:<key>`` (hash:
  ``paused_until``, ``horizon``): a rate key; all four expire 60 s after the longest window,
  hold or pause they can still matter for.
* ``P lim:brk:<key>`` (hash ``state``, ``failures``, ``reopens``, ``probe``): a breaker.
* ``P lim:bspent:<key>`` (string, US dollars), ``P lim:bheld:<key>`` (hash reservation ->
  US dollars), ``P lim:bexp:<key>`` (zset reservation -> expiry): a budget. Spent amounts do
  not expire (a budget key names its period, e.g. a day).
* ``P lim:res:<id>`` (hash ``amount``; set ``P lim:reskeys:<id>`` of its budget keys): a
  reservation, expiring ``2 * hold_s + 60`` seconds after it was made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["CONCURRENCY_POLL_S", "SharedLimitsMixin", "LIMIT_SCRIPTS"]

#: Seconds a caller is asked to wait when only a concurrency limit is full (no release time
#: is known in advance): the poll interval of :meth:`SharedLimitsMixin.shared_rate_acquire`.
CONCURRENCY_POLL_S = 0.02
_BREAKER_EVENTS = ("check", "before_call", "success", "failure", "abort")

_LUA_COMMON = """
local function fmt(x) return string.format('%.17g', x) end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS: log, tok, hold, meta. ARGV: permit, tokens, tpm or '', concurrency or '', hold_s,
# poll seconds, then (seconds, limit) pairs of the windows
RATE_ACQUIRE = _LUA_COMMON + """
local log, tok, hold, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local permit, tokens = ARGV[1], tonumber(ARGV[2])
local tpm, conc = tonumber(ARGV[3]), tonumber(ARGV[4])
local hold_s, poll = tonumber(ARGV[5]), tonumber(ARGV[6])
local EPS = 1e-9
if redis.call('ZSCORE', log, permit) or redis.call('ZSCORE', hold, permit) then
  return '0'
end
local now = clock()
local last = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
if last[2] and tonumber(last[2]) > now then now = tonumber(last[2]) end
local horizon = tonumber(redis.call('HGET', meta, 'horizon') or '60')
local windows = {}
for i = 7, #ARGV, 2 do
  local secs, limit = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  table.insert(windows, {secs, limit})
  if secs > horizon then horizon = secs end
end
-- prune admissions older than the longest window, and holds that expired
while true do
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', fmt(now - horizon), 'LIMIT', 0, 500)
  if #old == 0 then break end
  redis.call('ZREM', log, unpack(old))
  redis.call('HDEL', tok, unpack(old))
end
redis.call('ZREMRANGEBYSCORE', hold, '-inf', fmt(now))
local delay = 0
local paused = tonumber(redis.call('HGET', meta, 'paused_until') or '')
if paused and paused - now > delay then delay = paused - now end
for _, w in ipairs(windows) do
  local secs, limit = w[1], w[2]
  local n = redis.call('ZCOUNT', log, '(' .. fmt(now - secs + EPS), '+inf')
  if n >= limit then
    local e = redis.call('ZRANGE', log, -limit, -limit, 'WITHSCORES')
    local d = tonumber(e[2]) + secs - now
    if d > delay then delay = d end
  end
end
if tpm then
  local entries = redis.call('ZRANGEBYSCORE', log, '(' .. fmt(now - 60 + EPS), '+inf',
                             'WITHSCORES')
  local used, counted = 0, {}
  for i = 1, #entries, 2 do
    local n = tonumber(redis.call('HGET', tok, entries[i]) or '0')
    used = used + n
    table.insert(counted, {tonumber(entries[i + 1]), n})
  end
  if used > 0 and used + tokens > tpm then
    local excess, freed = used + tokens - tpm, 0
    for _, e in ipairs(counted) do
      freed = freed + e[2]
      if freed >= excess then
        local d = e[1] + 60 - now
        if d > delay then delay = d end
        break
      end
    end
  end
end
if conc and redis.call('ZCARD', hold) >= conc then
  if poll > delay then delay = poll end
end
if delay > EPS then
  if delay < 0.001 then delay = 0.001 end
  return fmt(delay)
end
redis.call('ZADD', log, fmt(now), permit)
redis.call('HSET', tok, permit, ARGV[2])
redis.call('ZADD', hold, fmt(now + hold_s), permit)
redis.call('HSET', meta, 'horizon', fmt(horizon))
local keep = horizon
if hold_s > keep then keep = hold_s end
if paused and paused - now > keep then keep = paused - now end
local ms = math.ceil((keep + 60) * 1000)
for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, ms) end
return '0'
"""

# KEYS: log, tok, hold. ARGV: permit, actual tokens or ''
RATE_RELEASE = """
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[2] ~= '' and redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return 1
"""

# KEYS: meta. ARGV: seconds
RATE_PAUSE = _LUA_COMMON + """
local now = clock()
local until_ = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '')
if cur and cur > until_ then until_ = cur end
redis.call('HSET', KEYS[1], 'paused_until', fmt(until_))
local keep = until_ - now + tonumber(redis.call('HGET', KEYS[1], 'horizon') or '60') + 60
local ttl = redis.call('PTTL', KEYS[1])
local ms = math.ceil(keep * 1000)
if ttl < ms then redis.call('PEXPIRE', KEYS[1], ms) end
return 1
"""

# KEYS: breaker. ARGV: event, threshold, cooldown_s. Returns {state, reopens or ''}
BREAKER = _LUA_COMMON + """
local key, event = KEYS[1], ARGV[1]
local threshold, cooldown = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = clock()
if redis.call('EXISTS', key) == 0 then
  if event ~= 'failure' then return {'closed', ''} end
  redis.call('HSET', key, 'state', 'closed', 'failures', '0', 'reopens', '', 'probe', '')
end
local b = redis.call('HMGET', key, 'state', 'failures', 'reopens', 'probe')
local state, failures = b[1], tonumber(b[2])
local reopens, probe = tonumber(b[3]), tonumber(b[4])
local function open_answer()
  if state == 'open' and reopens then return {'open', fmt(reopens)} end
  if state == 'open' then return {'open', ''} end
  return {state, ''}
end
if event == 'check' then
  if state == 'open' and (reopens == nil or now >= reopens) then return {'half_open', ''} end
  return open_answer()
end
if event == 'before_call' then
  if state == 'closed' then return {'closed', ''} end
  if state == 'open' and reopens and now < reopens then return {'open', fmt(reopens)} end
  if state == 'half_open' and probe and now < probe + cooldown then
    return {'half_open', ''}
  end
  redis.call('HSET', key, 'state', 'half_open', 'probe', fmt(now))
  return {'probe', ''}
end
if event == 'success' then
  redis.call('HSET', key, 'state', 'closed', 'failures', '0', 'reopens', '', 'probe', '')
  return {'closed', ''}
end
if event == 'failure' then
  failures = failures + 1
  redis.call('HSET', key, 'failures', tostring(failures))
  if state == 'half_open' or failures >= threshold then
    local at = now + cooldown
    redis.call('HSET', key, 'state', 'open', 'reopens', fmt(at), 'probe', '')
    return {'open', fmt(at)}
  end
  return open_answer()
end
-- abort: a probe ended without an outcome
if state == 'half_open' then
  redis.call('HSET', key, 'state', 'open', 'probe', '')
  state = 'open'
end
return open_answer()
"""

_LUA_BUDGET = """
local function expire_held(prefix, key, now)
  local held, exp, spent = prefix .. 'bheld:' .. key, prefix .. 'bexp:' .. key,
                           prefix .. 'bspent:' .. key
  while true do
    local gone = redis.call('ZRANGEBYSCORE', exp, '-inf', fmt(now), 'LIMIT', 0, 500)
    if #gone == 0 then break end
    local total = tonumber(redis.call('GET', spent) or '0')
    for _, rid in ipairs(gone) do
      total = total + tonumber(redis.call('HGET', held, rid) or '0')
      redis.call('HDEL', held, rid)
    end
    redis.call('ZREM', exp, unpack(gone))
    redis.call('SET', spent, fmt(total))
  end
end
local function budget_state(prefix, key)
  local spent = tonumber(redis.call('GET', prefix .. 'bspent:' .. key) or '0')
  local reserved = 0
  for _, v in ipairs(redis.call('HVALS', prefix .. 'bheld:' .. key)) do
    reserved = reserved + tonumber(v)
  end
  return spent, reserved
end
"""

# ARGV: prefix ('P lim:'), reservation id, amount, hold_s, then (key, limit) pairs.
# Returns false when held, else {key, spent, reserved}
BUDGET_RESERVE = _LUA_COMMON + _LUA_BUDGET + """
local prefix, rid = ARGV[1], ARGV[2]
local amount, hold_s = tonumber(ARGV[3]), tonumber(ARGV[4])
local res = prefix .. 'res:' .. rid
if redis.call('EXISTS', res) == 1 then return false end
local now = clock()
local keys = {}
for i = 5, #ARGV, 2 do
  local key, limit = ARGV[i], tonumber(ARGV[i + 1])
  expire_held(prefix, key, now)
  local spent, reserved = budget_state(prefix, key)
  if spent + reserved + amount > limit + 1e-12 then
    return {key, fmt(spent), fmt(reserved)}
  end
  keys[key] = true
end
local ttl = math.ceil((2 * hold_s + 60) * 1000)
redis.call('HSET', res, 'amount', ARGV[3])
redis.call('PEXPIRE', res, ttl)
for key, _ in pairs(keys) do
  redis.call('HSET', prefix .. 'bheld:' .. key, rid, ARGV[3])
  redis.call('ZADD', prefix .. 'bexp:' .. key, fmt(now + hold_s), rid)
  redis.call('SADD', prefix .. 'reskeys:' .. rid, key)
end
redis.call('PEXPIRE', prefix .. 'reskeys:' .. rid, ttl)
return false
"""

# ARGV: prefix, reservation id, actual US dollars or ''
BUDGET_SETTLE = _LUA_COMMON + """
local prefix, rid = ARGV[1], ARGV[2]
local res = prefix .. 'res:' .. rid
if redis.call('EXISTS', res) == 0 then return 0 end
local actual = tonumber(ARGV[3])
for _, key in ipairs(redis.call('SMEMBERS', prefix .. 'reskeys:' .. rid)) do
  if redis.call('HDEL', prefix .. 'bheld:' .. key, rid) == 1 then
    redis.call('ZREM', prefix .. 'bexp:' .. key, rid)
    if actual then
      local spent = prefix .. 'bspent:' .. key
      redis.call('SET', spent, fmt(tonumber(redis.call('GET', spent) or '0') + actual))
    end
  end
end
redis.call('DEL', res, prefix .. 'reskeys:' .. rid)
return 1
"""

# ARGV: prefix, key. Returns {spent, reserved}
BUDGET_STATE = _LUA_COMMON + _LUA_BUDGET + """
expire_held(ARGV[1], ARGV[2], clock())
local spent, reserved = budget_state(ARGV[1], ARGV[2])
return {fmt(spent), fmt(reserved)}
"""

LIMIT_SCRIPTS: dict[str, str] = {
    "rate_acquire": RATE_ACQUIRE,
    "rate_release": RATE_RELEASE,
    "rate_pause": RATE_PAUSE,
    "breaker": BREAKER,
    "budget_reserve": BUDGET_RESERVE,
    "budget_settle": BUDGET_SETTLE,
    "budget_state": BUDGET_STATE,
}


def _finite(value: Any, what: str, *, low: float, strict: bool = False) -> float:
    """``value`` as a float after checking it is a finite number ``>= low`` (``> low`` when
    ``strict``).

    Raises:
        ValueError: not a number, not finite, or out of range (naming ``what``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or math.isinf(value) or value < low or (strict and value == low):
        raise ValueError(f"{what} must be a finite number {'>' if strict else '>='} {low:g}, "
                         f"got {value!r}")
    return float(value)


def _count(value: Any, what: str, *, low: int = 1) -> int:
    """``value`` after checking it is an integer ``>= low``.

    Raises:
        ValueError: not an integer, or below ``low`` (naming ``what``).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    return value


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class SharedLimitsMixin:
    """:class:`flowyard.SupportsSharedLimits` on Redis, for
    :class:`~flowyard_redis.storage.RedisStorage` (which provides ``k``, ``_call`` and
    ``_script``).
    """

    k: Callable[..., str]
    _call: Callable[..., Any]
    _script: Callable[[str], Any]

    def _lim(self, kind: str, key: str) -> str:
        return f"{self.k('lim', kind)}:{key}"

    async def shared_rate_acquire(self, key: str, *, permit_id: str,
                                  windows: Sequence[tuple[float, int]], tokens: int = 0,
                                  tpm: int | None = None, concurrency: int | None = None,
                                  hold_s: float = 600.0) -> float:
        """Admit one call under ``key`` if every limit allows it now (one Lua script on
        Redis's clock).

        Args:
            key: the limiter's key.
            permit_id: the caller's id for this admission (released with it).
            windows: ``(seconds, most requests)`` sliding windows.
            tokens: estimated tokens of the call, counted against ``tpm`` over 60 s (a call
                estimated above ``tpm`` counts as ``tpm``).
            tpm: tokens per minute (None: unlimited).
            concurrency: calls in flight at once under ``key`` (None: unlimited).
            hold_s: seconds after which an unreleased permit is freed.

        Returns:
            0.0 when admitted (also for a ``permit_id`` admitted before); otherwise the
            seconds to wait before asking again (> 0; :data:`CONCURRENCY_POLL_S` when only
            the concurrency limit is full).

        Raises:
            ValueError: a window, ``tokens``, ``tpm``, ``concurrency`` or ``hold_s`` out of
                range.
            StorageError: Redis failed.
        """
        checked = [(_finite(s, "window seconds", low=0.0, strict=True),
                    _count(n, "window limit")) for s, n in windows]
        tokens = _count(tokens, "tokens", low=0)
        if tpm is not None:
            tpm = _count(tpm, "tpm")
            tokens = min(tokens, tpm)
        if concurrency is not None:
            concurrency = _count(concurrency, "concurrency")
        hold_s = _finite(hold_s, "hold_s", low=0.0, strict=True)
        keys = [self._lim(kind, key) for kind in ("rlog", "rtok", "rhold", "rmeta")]
        args: list[Any] = [permit_id, str(tokens), "" if tpm is None else str(tpm),
                           "" if concurrency is None else str(concurrency), repr(hold_s),
                           repr(CONCURRENCY_POLL_S)]
        for seconds, limit in checked:
            args += [repr(seconds), str(limit)]
        answer = await self._call(f"acquiring rate limit {key!r}", lambda c: (
            self._script("rate_acquire")(keys=keys, args=args)))
        return float(_text(answer))

    async def shared_rate_release(self, key: str, permit_id: str, *,
                                  actual_tokens: int | None = None) -> None:
        """Free the permit's concurrency slot and, when given, replace its estimated tokens
        with ``actual_tokens``. Idempotent; an unknown or expired permit is ignored.

        Raises:
            ValueError: ``actual_tokens`` is negative.
            StorageError: Redis failed.
        """
        if actual_tokens is not None:
            actual_tokens = _count(actual_tokens, "actual_tokens", low=0)
        keys = [self._lim(kind, key) for kind in ("rlog", "rtok", "rhold")]
        args = [permit_id, "" if actual_tokens is None else str(actual_tokens)]
        await self._call(f"releasing rate limit {key!r}", lambda c: (
            self._script("rate_release")(keys=keys, args=args)))

    async def shared_rate_pause(self, key: str, seconds: float) -> None:
        """Admit nobody under ``key`` for ``seconds`` (>= 0) from now (Redis's clock); a
        shorter pause never shortens a longer one.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
            StorageError: Redis failed.
        """
        seconds = _finite(seconds, "pause seconds", low=0.0)
        keys = [self._lim("rmeta", key)]
        await self._call(f"pausing rate limit {key!r}", lambda c: (
            self._script("rate_pause")(keys=keys, args=[repr(seconds)])))

    async def shared_breaker(self, key: str, *, event: str, threshold: int,
                             cooldown_s: float) -> tuple[str, float | None]:
        """Read or update the circuit breaker ``key`` atomically (see
        :meth:`flowyard.SupportsSharedLimits.shared_breaker` for the events).

        Args:
            key: the breaker's key.
            event: ``check``, ``before_call``, ``success``, ``failure`` or ``abort``.
            threshold: consecutive failures that open the breaker (>= 1).
            cooldown_s: seconds an open breaker stays open (> 0).

        Returns:
            ``(state, reopens_at)``: ``closed``, ``open``, ``half_open`` or ``probe``, and
            for an open breaker the Redis time (UNIX seconds) a probe is allowed at.

        Raises:
            ValueError: an unknown ``event``, ``threshold`` < 1 or ``cooldown_s`` <= 0.
            StorageError: Redis failed.
        """
        if event not in _BREAKER_EVENTS:
            raise ValueError(f"breaker event must be one of {', '.join(_BREAKER_EVENTS)}, "
                             f"got {event!r}")
        threshold = _count(threshold, "threshold")
        cooldown_s = _finite(cooldown_s, "cooldown_s", low=0.0, strict=True)
        keys = [self._lim("brk", key)]
        state, reopens = await self._call(f"updating breaker {key!r}", lambda c: (
            self._script("breaker")(keys=keys, args=[event, str(threshold),
                                                     repr(cooldown_s)])),
            retry=event in ("check", "success"))
        reopens_text = _text(reopens)
        return _text(state), float(reopens_text) if reopens_text else None

    async def shared_budget_reserve(self, reservation_id: str,
                                    budgets: Sequence[tuple[str, float]], amount_usd: float,
                                    *, hold_s: float = 600.0) -> tuple[str, float, float] | None:
        """Hold ``amount_usd`` (US dollars) in every budget, all or none (one Lua script).

        Args:
            reservation_id: the caller's id for the reservation (a retry holds once).
            budgets: ``(key, limit in US dollars)`` pairs.
            amount_usd: the amount to hold (>= 0).
            hold_s: seconds after which an unsettled reservation counts as spent.

        Returns:
            None when held everywhere; otherwise ``(key, spent_usd, reserved_usd)`` of the
            first budget that could not cover it (nothing was held).

        Raises:
            ValueError: ``amount_usd``, a limit or ``hold_s`` is negative or not finite.
            StorageError: Redis failed.
        """
        amount_usd = _finite(amount_usd, "amount_usd", low=0.0)
        checked = [(key, _finite(limit, f"limit of budget {key!r}", low=0.0))
                   for key, limit in budgets]
        hold_s = _finite(hold_s, "hold_s", low=0.0, strict=True)
        args: list[str] = [self.k("lim", ""), reservation_id, repr(amount_usd), repr(hold_s)]
        for key, limit in checked:
            args += [key, repr(limit)]
        answer = await self._call(f"reserving {amount_usd} USD", lambda c: (
            self._script("budget_reserve")(keys=[], args=args)))
        if not answer:
            return None
        key, spent, reserved = (_text(x) for x in answer)
        return key, float(spent), float(reserved)

    async def shared_budget_settle(self, reservation_id: str, actual_usd: float | None
                                   ) -> None:
        """Replace the reservation's held amount with ``actual_usd`` in every budget it
        holds (None: unknown cost, nothing spent). Idempotent; an unknown reservation, or
        one already counted as spent after its ``hold_s``, changes nothing.

        Raises:
            ValueError: ``actual_usd`` is negative or not finite.
            StorageError: Redis failed.
        """
        if actual_usd is not None:
            actual_usd = _finite(actual_usd, "actual_usd", low=0.0)
        args = [self.k("lim", ""), reservation_id, "" if actual_usd is None else repr(actual_usd)]
        await self._call(f"settling reservation {reservation_id}", lambda c: (
            self._script("budget_settle")(keys=[], args=args)))

    async def shared_budget_state(self, key: str) -> dict[str, float]:
        """Return ``{"spent_usd": ..., "reserved_usd": ...}`` of budget ``key`` (US dollars;
        zeros for an unknown key); a reservation past its ``hold_s`` counts as spent.

        Raises:
            StorageError: Redis failed.
        """
        spent, reserved = await self._call(f"reading budget {key!r}", lambda c: (
            self._script("budget_state")(keys=[], args=[self.k("lim", ""), key])))
        return {"spent_usd": float(_text(spent)), "reserved_usd": float(_text(reserved))}
