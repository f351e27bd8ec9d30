"""Redis storage backend of flowyard (URL schemes ``redis`` and ``rediss``).

:class:`RedisStorage` implements :class:`flowyard.StorageBackend` and the optional protocols
:class:`~flowyard.SupportsStepCommit`, :class:`~flowyard.SupportsIdempotentRuns`,
:class:`~flowyard.SupportsKeyValueListing`, :class:`~flowyard.SupportsKeyValueTTL`,
:class:`~flowyard.SupportsTaskQueue`, :class:`~flowyard.SupportsAuditLog` and
:class:`~flowyard.SupportsSharedLimits` (:mod:`flowyard_redis.limits`).

It uses redis-py's *synchronous* client in anyio worker threads (``anyio.to_thread``), so it
works on asyncio and trio alike (``redis.asyncio`` is asyncio-only). Every operation is one
round trip: a single command, a ``MULTI``/``EXEC`` transaction, or a Lua script (atomic in
Redis: no other client's command runs in between). redis-py's own retries are off: the
engine retries a retriable :class:`~flowyard.StorageError` itself.

Key layout (``P`` is the prefix, ``fy:`` by default; values are JSON text, UTF-8):

==============================  =========  ==================================================
key                             type       content
==============================  =========  ==================================================
``P run:<id>``                  string     the run record (JSON object)
``P runs``                      zset       run ids scored by ``created_at``
``P runidem``                   hash       submission idempotency key -> run id
``P lease:<run id>``            hash       the run lease, one JSON value per field
``P att:<run id>``              hash       ``[step_key, attempt]`` -> attempt (JSON)
``P ckpt:<run id>``             hash       step key -> output (JSON)
``P ev:<run id>``               hash       seq -> event (JSON); ``P evs:<run id>`` zset of seqs
``P ev0:<run id>``              list       events without a seq (never listed, kept)
``P logs:<run id>``             list       log lines (JSON)
``P costs`` / ``P costs:<run>`` list       cost lines, of all runs / of one run
``P kv:<ns>:<key>``             string     plugin value (JSON; may carry a native expiry)
``P kvidx:<ns>``                zset       the keys of namespace ``<ns>`` (lexicographic)
``P task:<id>``                 hash       a task, one JSON value per field (+ ``_qkey``,
                                           ``_score``)
``P tasks:queued``              zset       queued tasks: score ``-priority``, member
                                           ``<created_at>|<id>`` (priority, then age)
``P tasks:leased``              zset       running task ids scored by lease expiry
``P tasks:tenant:<tenant>``     zset       a tenant's task ids scored by ``created_at``
``P taskidem:<tenant>``         hash       task idempotency key -> task id
``P audit:seq`` / ``P audit``   string /   the audit head's seq / seq -> record (JSON)
                                hash
``P lim:...``                   various    shared limits (see :mod:`flowyard_redis.limits`)
==============================  =========  ==================================================

``<ns>`` and ``<tenant>`` have ``%`` and ``:`` percent-escaped, so no two namespaces share a
key. Redis Cluster is not supported (the scripts touch keys of several hash slots).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import attrs
from flowyard import (
    AuditRecord,
    Config,
    CostLine,
    Event,
    LogRecord,
    RunLease,
    RunNotFoundError,
    RunQuery,
    RunRecord,
    StepAttempt,
    StorageError,
    TaskNotFoundError,
    TaskQuery,
    TaskRecord,
    audit_from_json,
    audit_to_json,
    chain_audit,
    json_default,
)

from flowyard_redis import scripts
from flowyard_redis.limits import LIMIT_SCRIPTS, SharedLimitsMixin

__all__ = ["RedisStorage"]

log = logging.getLogger("flowyard_redis")

T = TypeVar("T")

#: query parameters of the URL that flowyard-redis reads itself (not passed to redis-py)
_OWN_PARAMS = ("prefix", "allow_eviction")
_SCAN = 500  # ids read per round trip when listing runs and tasks


def _esc(part: str) -> str:
    """``part`` with ``%`` and ``:`` percent-escaped (for namespaces and tenants in keys)."""
    return part.replace("%", "%25").replace(":", "%3A")


def _redact(url: str) -> str:
    """``url`` without its password (and user)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.username or parts.password:
        host = f"***@{host}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _dumps(value: Any, what: str) -> str:
    """JSON text of a JSON-ready value.

    Raises:
        StorageError: the value is not JSON-ready; ``what`` names it.
    """
    try:
        return json.dumps(value, default=json_default, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"{what} is not JSON-ready: {exc}") from None


def _text(raw: bytes | str, key: str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StorageError(f"damaged value under Redis key {key!r}: not UTF-8 ({exc})"
                           ) from None


def _loads(raw: bytes | str, key: str) -> Any:
    """The value of stored JSON text.

    Raises:
        StorageError: the text is not JSON (naming the Redis ``key``).
    """
    text = _text(raw, key)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StorageError(f"damaged value under Redis key {key!r}: not JSON ({exc}): "
                           f"{text[:80]!r}") from None


def _record(cls: type[T], data: Any, key: str) -> T:
    """An attrs record from its stored fields.

    Raises:
        StorageError: ``data`` is not an object of the record's fields (naming ``key``).
    """
    if not isinstance(data, dict):
        raise StorageError(f"damaged value under Redis key {key!r}: expected a JSON object "
                           f"of a {cls.__name__}, got {type(data).__name__}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise StorageError(f"damaged value under Redis key {key!r}: not a {cls.__name__} "
                           f"({exc})") from None


def _fields(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in attrs.fields(type(record))}


def _record_json(record: Any, what: str) -> str:
    return _dumps(_fields(record), what)


def _hash_fields(record: Any, what: str) -> dict[str, str]:
    """A record as a Redis hash: one JSON value per field (so Lua scripts can update one
    field without re-encoding the others: Lua's cjson would round floats to 14 digits).
    """
    return {name: _dumps(value, f"field {name!r} of {what}")
            for name, value in _fields(record).items()}


def _from_hash(cls: type[T], raw: dict[bytes, bytes] | list[bytes], key: str) -> T:
    """A record from a hash of JSON fields (a dict, or HGETALL's flat list from Lua);
    fields starting with ``_`` are the backend's own and are left out.
    """
    if isinstance(raw, list):
        raw = dict(zip(raw[0::2], raw[1::2], strict=True))
    data = {}
    for name, value in raw.items():
        field = _text(name, key)
        if not field.startswith("_"):
            data[field] = _loads(value, f"{key} (field {field})")
    return _record(cls, data, key)


def _num(value: float) -> str:
    """A number as text Redis parses back to the same double (``repr``)."""
    return repr(float(value)) if isinstance(value, float) else str(int(value))


class RedisStorage(SharedLimitsMixin):
    """A :class:`~flowyard.StorageBackend` on Redis (see the module docstring for the key
    layout).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` (TLS), with
            redis-py's query options (``socket_timeout``, ``max_connections``, ...) and
            flowyard-redis's own: ``prefix`` (key prefix, default ``fy:``) and
            ``allow_eviction`` (``1``: open even when Redis's ``maxmemory-policy`` may evict
            keys; default refuses).
        config: the stack configuration (unused; accepted for the factory signature).

    Raises:
        StorageError: the URL is not a redis/rediss URL.
    """

    def __init__(self, url: str, config: Config | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise StorageError(f"not a Redis URL (redis:// or rediss://): {_redact(url)}")
        params = parse_qsl(parts.query, keep_blank_values=True)
        own = {k: v for k, v in params if k in _OWN_PARAMS}
        rest = [(k, v) for k, v in params if k not in _OWN_PARAMS]
        self.url = url
        self.display_url = _redact(url)
        self.prefix = own.get("prefix", "fy:")
        self.allow_eviction = own.get("allow_eviction", "0").lower() in ("1", "true", "yes")
        self._client_url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest),
                                       ""))
        self._client: Any = None
        self._scripts: dict[str, Any] = {}

    # ------------------------------------------------------------------ plumbing

    def k(self, *parts: str) -> str:
        """The Redis key of ``parts`` joined by ``:`` under the prefix."""
        return self.prefix + ":".join(parts)

    async def _call(self, what: str, fn: Callable[[Any], T], *, retry: bool = True) -> T:
        """Run ``fn(client)`` in a worker thread, mapping Redis errors to StorageError.

        Args:
            what: what is being done (for error messages).
            fn: the operation on the synchronous client.
            retry: ``fn`` may be repeated: after a dropped connection (e.g. Redis restarted
                since the pooled connection was opened) the idle pooled connections are
                closed and ``fn`` is tried once more on a new one. Operations whose repeat
                could write twice pass False.

        Raises:
            StorageError: not open; ``retriable`` for a connection or timeout error.
        """
        client = self._client
        if client is None:
            raise StorageError(f"storage {self.display_url} is not open: call "
                               "'await stack.open()'")
        return await anyio.to_thread.run_sync(self._run_sync, what, fn, client, retry)

    def _run_sync(self, what: str, fn: Callable[[Any], T], client: Any,
                  retry: bool = False) -> T:
        import redis
        from redis.exceptions import BusyLoadingError

        tries = 2 if retry else 1
        for attempt in range(tries):
            try:
                return fn(client)
            except BusyLoadingError as exc:
                raise StorageError(f"Redis {self.display_url} is loading its data set while "
                                   f"{what}: {exc}", retriable=True) from None
            except redis.ConnectionError as exc:
                if attempt + 1 < tries:
                    client.connection_pool.disconnect(inuse_connections=False)
                    continue
                raise StorageError(f"Redis {self.display_url} unreachable while {what}: "
                                   f"{exc}", retriable=True) from None
            except redis.TimeoutError as exc:
                raise StorageError(f"Redis {self.display_url} timed out while {what}: {exc}",
                                   retriable=True) from None
            except redis.ResponseError as exc:
                retriable = str(exc).startswith(("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN"))
                raise StorageError(f"Redis {self.display_url} refused {what}: {exc}",
                                   retriable=retriable) from None
            except redis.RedisError as exc:
                raise StorageError(f"Redis {self.display_url} failed while {what}: {exc}"
                                   ) from None
        raise AssertionError("unreachable")  # the loop returns or raises

    def _script(self, name: str) -> Any:
        return self._scripts[name]

    async def open(self) -> None:
        """Connect, check that Redis answers and keeps keys (``maxmemory-policy``), and load
        the Lua scripts.

        Raises:
            StorageError: Redis is unreachable, or its ``maxmemory-policy`` may evict keys
                (anything but ``noeviction``) and ``allow_eviction`` is not set.
        """
        if self._client is not None:
            return
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        try:
            client = redis.Redis.from_url(self._client_url, decode_responses=False,
                                          retry=Retry(NoBackoff(), 0))
        except (ValueError, TypeError) as exc:
            raise StorageError(f"invalid Redis URL {self.display_url}: {exc}") from None

        def check(c: Any) -> dict[str, Any]:
            c.ping()
            info = c.info("memory")
            persistence = c.info("persistence")
            return {"policy": info.get("maxmemory_policy"),
                    "aof": persistence.get("aof_enabled")}

        try:
            state = await anyio.to_thread.run_sync(self._run_sync, "opening", check, client,
                                                   False)
        except StorageError:
            client.close()
            raise
        policy = state["policy"]
        if isinstance(policy, bytes):
            policy = policy.decode()
        if policy not in (None, "noeviction"):
            message = (f"Redis {self.display_url} has maxmemory-policy {policy!r}: it may "
                       "evict flowyard's runs, checkpoints and queue under memory pressure; "
                       "set 'maxmemory-policy noeviction' (or add ?allow_eviction=1 to the "
                       "URL to accept the loss)")
            if not self.allow_eviction:
                client.close()
                raise StorageError(message)
            log.warning(message)
        if not state["aof"]:
            log.warning("Redis %s runs without the append-only file (appendonly no): a Redis "
                        "crash loses every write since the last RDB snapshot; see "
                        "docs/plugins/redis.md", self.display_url)
        self._scripts = {name: client.register_script(source)
                         for name, source in {**scripts.SCRIPTS, **LIMIT_SCRIPTS}.items()}
        self._client = client

    async def close(self) -> None:
        """Close the connections. Safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            await anyio.to_thread.run_sync(client.close)

    # ------------------------------------------------------------------ runs

    def _run_json(self, run: RunRecord) -> str:
        return _record_json(run, f"run {run.id}")

    async def create_run(self, run: RunRecord) -> None:
        """Insert a new run.

        Raises:
            StorageError: ``run.id`` exists, or a value is not JSON-ready.
        """
        await self._create(run, "")

    async def create_run_once(self, run: RunRecord, idempotency_key: str
                              ) -> tuple[RunRecord, bool]:
        """Insert ``run`` unless a run was stored under ``idempotency_key`` (one Lua script:
        atomic across processes).

        Returns:
            ``(run, True)`` when inserted, ``(existing run, False)`` otherwise.

        Raises:
            StorageError: ``run.id`` exists already, or a value is not JSON-ready.
        """
        if not idempotency_key:
            raise StorageError("an idempotency key must not be empty")
        existing = await self._create(run, idempotency_key)
        if existing is None:
            return await self.get_run(run.id), True
        return await self.get_run(existing), False

    async def _create(self, run: RunRecord, idempotency_key: str) -> str | None:
        text = self._run_json(run)
        keys = [self.k("run", run.id), self.k("runs"), self.k("runidem")]
        args = [text, _num(run.created_at), run.id, idempotency_key]
        answer = await self._call(f"creating run {run.id}",
                                  lambda c: self._script("create_run")(keys=keys, args=args),
                                  retry=False)
        if answer[0] == b"exists":
            raise StorageError(f"run {run.id} already exists")
        if answer[0] == b"existing":
            return _text(answer[1], self.k("runidem"))
        return None

    async def update_run(self, run: RunRecord) -> None:
        """Replace a stored run (its lease is kept apart and untouched).

        Raises:
            RunNotFoundError: no such run.
            StorageError: a value is not JSON-ready.
        """
        text = self._run_json(run)
        keys = [self.k("run", run.id), self.k("runs")]
        found = await self._call(f"updating run {run.id}", lambda c: self._script(
            "update_run")(keys=keys, args=[text, _num(run.created_at), run.id]))
        if not found:
            raise RunNotFoundError(f"no run {run.id!r}")

    async def get_run(self, run_id: str) -> RunRecord:
        """Return one run.

        Raises:
            RunNotFoundError: no such run.
            StorageError: the stored run is damaged (naming its key).
        """
        key = self.k("run", run_id)
        raw = await self._call(f"reading run {run_id}", lambda c: c.get(key))
        if raw is None:
            raise RunNotFoundError(f"no run {run_id!r}")
        return _record(RunRecord, _loads(raw, key), key)

    async def list_runs(self, query: RunQuery) -> list[RunRecord]:
        """Return runs matching ``query`` in ``query.order`` (ties by id).

        The ``created_at`` bounds are a range of the ``runs`` index; status and workflow
        name are filtered while reading it (500 runs per round trip).
        """
        low = _num(query.created_after) if query.created_after is not None else "-inf"
        high = f"({_num(query.created_before)}" if query.created_before is not None else "+inf"
        desc = query.order.startswith("-")
        index = self.k("runs")

        def scan(c: Any) -> list[RunRecord]:
            found: list[RunRecord] = []
            skipped, start = 0, 0
            while len(found) < query.limit:
                if desc:
                    ids = c.zrevrangebyscore(index, high, low, start=start, num=_SCAN)
                else:
                    ids = c.zrangebyscore(index, low, high, start=start, num=_SCAN)
                if not ids:
                    break
                start += len(ids)
                keys = [self.k("run", _text(i, index)) for i in ids]
                for key, raw in zip(keys, c.mget(keys), strict=True):
                    if raw is None:
                        continue
                    run = _record(RunRecord, _loads(raw, key), key)
                    if ((query.status is None or run.status == query.status) and
                            (query.workflow_name is None
                             or run.workflow_name == query.workflow_name)):
                        if skipped < query.offset:
                            skipped += 1
                        elif len(found) < query.limit:
                            found.append(run)
            return found

        return await self._call("listing runs", scan)

    # ------------------------------------------------------------------ leases

    def _lease_from(self, raw: Any, run_id: str) -> RunLease:
        return _from_hash(RunLease, raw, self.k("lease", run_id))

    async def claim_lease(self, lease: RunLease, *, now: float,
                          replace_owner: str | None = None) -> RunLease:
        """Make ``lease`` the run's lease unless another live owner holds it (one Lua script:
        a compare-and-set across processes).

        Returns:
            ``lease`` when claimed, else the holder's lease.

        Raises:
            RunNotFoundError: no such run.
        """
        fields = _hash_fields(lease, f"lease of run {lease.run_id}")
        keys = [self.k("run", lease.run_id), self.k("lease", lease.run_id)]
        args = [fields["owner"], _num(now),
                json.dumps(replace_owner) if replace_owner is not None else "",
                *[x for pair in fields.items() for x in pair]]
        answer = await self._call(f"claiming the lease of run {lease.run_id}", lambda c: (
            self._script("claim_lease")(keys=keys, args=args)))
        if answer[0] == b"missing":
            raise RunNotFoundError(f"no run {lease.run_id!r}")
        if answer[0] == b"claimed":
            return attrs.evolve(lease)
        return self._lease_from(answer[1:], lease.run_id)

    async def renew_lease(self, run_id: str, owner: str, *, heartbeat_at: float,
                          expires_at: float) -> bool:
        """Move the lease's heartbeat and expiry (UNIX seconds) if ``owner`` holds it.

        Returns:
            True when renewed, False when ``owner`` does not hold it.
        """
        key = self.k("lease", run_id)
        args = [json.dumps(owner), _num(heartbeat_at), _num(expires_at)]
        return bool(await self._call(f"renewing the lease of run {run_id}", lambda c: (
            self._script("renew_lease")(keys=[key], args=args))))

    async def release_lease(self, run_id: str, owner: str) -> bool:
        """Drop the lease if ``owner`` holds it; True when dropped."""
        key = self.k("lease", run_id)
        return bool(await self._call(f"releasing the lease of run {run_id}", lambda c: (
            self._script("release_lease")(keys=[key], args=[json.dumps(owner)])), retry=False))

    async def get_leases(self, run_ids: Sequence[str]) -> dict[str, RunLease]:
        """Return ``{run_id: lease}`` of the given runs that hold one (expired or not)."""
        ids = list(run_ids)

        def read(c: Any) -> list[Any]:
            pipe = c.pipeline(transaction=False)
            for rid in ids:
                pipe.hgetall(self.k("lease", rid))
            return pipe.execute()

        if not ids:
            return {}
        answers = await self._call("reading run leases", read)
        return {rid: self._lease_from(raw, rid)
                for rid, raw in zip(ids, answers, strict=True) if raw}

    # ------------------------------------------------------------------ steps

    def _attempt_field(self, attempt: StepAttempt) -> tuple[str, str]:
        what = (f"attempt {attempt.attempt} of step {attempt.step_key!r} of run "
                f"{attempt.run_id}")
        return json.dumps([attempt.step_key, attempt.attempt]), _record_json(attempt, what)

    async def save_attempt(self, attempt: StepAttempt) -> None:
        """Insert or update the attempt keyed by (run_id, step_key, attempt).

        Raises:
            StorageError: its output is not JSON-ready.
        """
        field, text = self._attempt_field(attempt)
        key = self.k("att", attempt.run_id)
        await self._call(f"saving an attempt of run {attempt.run_id}",
                         lambda c: c.hset(key, field, text))

    async def list_attempts(self, run_id: str) -> list[StepAttempt]:
        """Return the run's attempts ordered by start time (then step key and attempt)."""
        key = self.k("att", run_id)
        raws = await self._call(f"listing attempts of run {run_id}", lambda c: c.hvals(key))
        attempts = [_record(StepAttempt, _loads(raw, key), key) for raw in raws]
        attempts.sort(key=lambda a: (a.started_at, a.step_key, a.attempt))
        return attempts

    async def save_checkpoint(self, run_id: str, step_key: str, output: Any) -> None:
        """Record a completed step key's output.

        Raises:
            StorageError: ``output`` is not JSON-ready.
        """
        text = _dumps(output, f"output of step {step_key!r} of run {run_id}")
        key = self.k("ckpt", run_id)
        await self._call(f"saving a checkpoint of run {run_id}",
                         lambda c: c.hset(key, step_key, text))

    async def load_checkpoints(self, run_id: str) -> dict[str, Any]:
        """Return ``{step_key: output}`` of the run's completed step keys."""
        key = self.k("ckpt", run_id)
        raw = await self._call(f"loading checkpoints of run {run_id}", lambda c: c.hgetall(key))
        return {_text(name, key): _loads(value, f"{key} (step {_text(name, key)})")
                for name, value in raw.items()}

    def _queue_events(self, pipe: Any, events: Iterable[Event]) -> None:
        for event in events:
            text = _record_json(event, f"data of event {event.type!r} of run {event.run_id}")
            if event.seq:
                pipe.hsetnx(self.k("ev", event.run_id), str(event.seq), text)
                pipe.zadd(self.k("evs", event.run_id), {str(event.seq): event.seq}, nx=True)
            else:
                pipe.rpush(self.k("ev0", event.run_id), text)

    def _prepare_events(self, events: Sequence[Event]) -> list[Event]:
        for event in events:  # check everything before anything is sent
            _record_json(event, f"data of event {event.type!r} of run {event.run_id}")
        return list(events)

    async def append_events(self, events: Sequence[Event]) -> None:
        """Append numbered events; an event whose ``(run_id, seq)`` is stored is skipped.

        Raises:
            StorageError: an event's data is not JSON-ready (nothing stored).
        """
        checked = self._prepare_events(events)
        if not checked:
            return

        def write(c: Any) -> None:
            pipe = c.pipeline(transaction=True)
            self._queue_events(pipe, checked)
            pipe.execute()

        await self._call("appending events", write)

    async def list_events(self, run_id: str, *, after_seq: int = 0, limit: int = 1000
                          ) -> list[Event]:
        """Return events with ``seq > after_seq`` in seq order, at most ``limit``."""
        index, key = self.k("evs", run_id), self.k("ev", run_id)

        def read(c: Any) -> list[Any]:
            seqs = c.zrangebyscore(index, f"({int(after_seq)}", "+inf", start=0, num=limit)
            return c.hmget(key, seqs) if seqs else []

        raws = await self._call(f"listing events of run {run_id}", read)
        return [_record(Event, _loads(raw, key), key) for raw in raws if raw is not None]

    async def append_log(self, record: LogRecord) -> None:
        """Append a log line."""
        text = _record_json(record, f"log line of run {record.run_id}")
        key = self.k("logs", record.run_id)
        await self._call(f"appending a log line of run {record.run_id}",
                         lambda c: c.rpush(key, text), retry=False)

    async def list_logs(self, run_id: str) -> list[LogRecord]:
        """Return the run's log lines in order."""
        key = self.k("logs", run_id)
        raws = await self._call(f"listing logs of run {run_id}", lambda c: c.lrange(key, 0, -1))
        return [_record(LogRecord, _loads(raw, key), key) for raw in raws]

    async def add_cost(self, line: CostLine) -> None:
        """Append a cost line (to the run's list and the list of all runs, atomically)."""
        text = _record_json(line, f"cost line of run {line.run_id}")

        def write(c: Any) -> None:
            pipe = c.pipeline(transaction=True)
            pipe.rpush(self.k("costs"), text)
            pipe.rpush(self.k("costs", line.run_id), text)
            pipe.execute()

        await self._call(f"adding a cost line of run {line.run_id}", write, retry=False)

    async def list_costs(self, run_id: str | None = None) -> list[CostLine]:
        """Return cost lines of one run, or of all runs when ``run_id`` is None."""
        key = self.k("costs") if run_id is None else self.k("costs", run_id)
        raws = await self._call("listing cost lines", lambda c: c.lrange(key, 0, -1))
        return [_record(CostLine, _loads(raw, key), key) for raw in raws]

    async def commit_step(self, run_id: str, *, attempt: StepAttempt | None = None,
                          checkpoint: tuple[str, Any] | None = None,
                          events: Sequence[Event] = (), logs: Sequence[LogRecord] = ()
                          ) -> None:
        """Write a step key's attempt, checkpoint, events and log lines in one ``MULTI``/
        ``EXEC`` transaction (:class:`~flowyard.SupportsStepCommit`). Everything is encoded
        before anything is sent, so a value that is not JSON-ready writes nothing.

        Raises:
            StorageError: a value is not JSON-ready (naming the run), or Redis failed.
        """
        field = text = ck_text = None
        try:
            if attempt is not None:
                field, text = self._attempt_field(attempt)
            if checkpoint is not None:
                ck_text = _dumps(checkpoint[1], f"output of step {checkpoint[0]!r} of run "
                                                f"{run_id}")
            checked = self._prepare_events(events)
            log_texts = [_record_json(r, f"log line of run {run_id}") for r in logs]
        except StorageError as exc:
            raise StorageError(f"nothing of run {run_id}'s step was stored: {exc}") from None
        if field is None and ck_text is None and not checked and not log_texts:
            return

        def write(c: Any) -> None:
            pipe = c.pipeline(transaction=True)
            if field is not None:
                pipe.hset(self.k("att", run_id), field, text)
            if checkpoint is not None:
                pipe.hset(self.k("ckpt", run_id), checkpoint[0], ck_text)
            self._queue_events(pipe, checked)
            if log_texts:
                pipe.rpush(self.k("logs", run_id), *log_texts)
            pipe.execute()

        await self._call(f"committing a step of run {run_id}", write, retry=not log_texts)

    # ------------------------------------------------------------------ key-value

    def _kv_key(self, namespace: str, key: str) -> str:
        return self.k("kv", _esc(namespace), key)

    async def kv_get(self, namespace: str, key: str) -> Any | None:
        """Return a plugin value, or None (also once its expiry passed)."""
        rkey = self._kv_key(namespace, key)
        raw = await self._call(f"reading {namespace}/{key}", lambda c: c.get(rkey))
        return None if raw is None else _loads(raw, rkey)

    async def kv_set(self, namespace: str, key: str, value: Any) -> None:
        """Store a JSON-ready plugin value (no expiry).

        Raises:
            StorageError: the value is not JSON-ready.
        """
        await self._kv_write(namespace, key, value, None)

    async def kv_set_ttl(self, namespace: str, key: str, value: Any, *, ttl_s: float) -> None:
        """Store a JSON-ready value for ``ttl_s`` seconds with Redis's native key expiry
        (``SET ... PX``, millisecond resolution, at least 1 ms).

        Raises:
            ValueError: ``ttl_s`` is not a positive number.
            StorageError: the value is not JSON-ready.
        """
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not ttl_s > 0:
            raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
        await self._kv_write(namespace, key, value, max(1, round(ttl_s * 1000)))

    async def _kv_write(self, namespace: str, key: str, value: Any, ttl_ms: int | None
                        ) -> None:
        text = _dumps(value, f"value {namespace}/{key}")
        rkey, index = self._kv_key(namespace, key), self.k("kvidx", _esc(namespace))

        def write(c: Any) -> None:
            pipe = c.pipeline(transaction=True)
            pipe.set(rkey, text, px=ttl_ms)
            pipe.zadd(index, {key: 0})
            pipe.execute()

        await self._call(f"storing {namespace}/{key}", write)

    async def kv_delete(self, namespace: str, key: str) -> None:
        """Delete a plugin value (no error when absent)."""
        rkey, index = self._kv_key(namespace, key), self.k("kvidx", _esc(namespace))

        def delete(c: Any) -> None:
            pipe = c.pipeline(transaction=True)
            pipe.delete(rkey)
            pipe.zrem(index, key)
            pipe.execute()

        await self._call(f"deleting {namespace}/{key}", delete)

    async def kv_list(self, namespace: str, *, after: str = "", limit: int = 100
                      ) -> list[tuple[str, Any]]:
        """Return up to ``limit`` ``(key, value)`` pairs of ``namespace`` with keys after
        ``after``, in key order; expired entries are left out (and dropped from the index).
        """
        index = self.k("kvidx", _esc(namespace))

        def scan(c: Any) -> list[tuple[str, Any]]:
            found: list[tuple[str, Any]] = []
            start = "(" + after if after else "-"
            while len(found) < limit:
                names = [_text(n, index) for n in
                         c.zrangebylex(index, start, "+", start=0, num=limit - len(found))]
                if not names:
                    break
                keys = [self._kv_key(namespace, n) for n in names]
                gone = []
                for name, rkey, raw in zip(names, keys, c.mget(keys), strict=True):
                    if raw is None:
                        gone.append(name)
                    else:
                        found.append((name, _loads(raw, rkey)))
                if gone:
                    c.zrem(index, *gone)
                start = "(" + names[-1]
            return found

        return await self._call(f"listing {namespace}", scan)

    # ------------------------------------------------------------------ task queue

    def _task_key(self, task_id: str) -> str:
        return self.k("task", task_id)

    def _task_from(self, raw: Any, task_id: str) -> TaskRecord:
        return _from_hash(TaskRecord, raw, self._task_key(task_id))

    async def submit_task(self, task: TaskRecord) -> tuple[TaskRecord, bool]:
        """Insert a ``queued`` task unless its tenant's idempotency key names one (one Lua
        script).

        Returns:
            ``(task, True)`` when inserted, ``(existing, False)`` otherwise.

        Raises:
            StorageError: the id exists, a value is not JSON-ready, ``created_at`` is
                negative, or ``priority`` is beyond +-2**53.
        """
        if task.created_at < 0:
            raise StorageError(f"task {task.id}: created_at must be >= 0, got {task.created_at}")
        if abs(task.priority) > 2**53:
            raise StorageError(f"task {task.id}: priority must be within +-2**53")
        stored = attrs.evolve(task, status="queued")
        fields = _hash_fields(stored, f"task {task.id}")
        qkey = f"{task.created_at:020.6f}|{task.id}"
        fields["_qkey"] = qkey
        fields["_score"] = str(-task.priority)
        tenant = _esc(task.tenant)
        keys = [self._task_key(task.id), self.k("tasks", "queued"),
                self.k("tasks", "tenant", tenant), self.k("taskidem", tenant)]
        args = [task.idempotency_key or "", task.id, str(-task.priority), qkey,
                _num(task.created_at), *[x for pair in fields.items() for x in pair]]
        answer = await self._call(f"submitting task {task.id}", lambda c: (
            self._script("submit_task")(keys=keys, args=args)), retry=False)
        if answer[0] == b"duplicate":
            raise StorageError(f"task {task.id} already exists")
        if answer[0] == b"existing":
            return await self.get_task(_text(answer[1], keys[3])), False
        return stored, True

    async def get_task(self, task_id: str) -> TaskRecord:
        """Return a task.

        Raises:
            TaskNotFoundError: no such task.
            StorageError: the stored task is damaged (naming its key).
        """
        key = self._task_key(task_id)
        raw = await self._call(f"reading task {task_id}", lambda c: c.hgetall(key))
        if not raw:
            raise TaskNotFoundError(f"no task {task_id!r}")
        return self._task_from(raw, task_id)

    async def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        """Return the tenant's tasks matching ``query``, newest first (ties by id)."""
        index = self.k("tasks", "tenant", _esc(query.tenant))

        def scan(c: Any) -> list[TaskRecord]:
            found: list[TaskRecord] = []
            skipped, start = 0, 0
            while len(found) < query.limit:
                ids = [_text(i, index) for i in
                       c.zrevrangebyscore(index, "+inf", "-inf", start=start, num=_SCAN)]
                if not ids:
                    break
                start += len(ids)
                pipe = c.pipeline(transaction=False)
                for tid in ids:
                    pipe.hgetall(self._task_key(tid))
                for tid, raw in zip(ids, pipe.execute(), strict=True):
                    if not raw:
                        continue
                    task = self._task_from(raw, tid)
                    if ((query.status is None or task.status == query.status)
                            and (query.kind is None or task.kind == query.kind)
                            and (query.target is None or task.target == query.target)):
                        if skipped < query.offset:
                            skipped += 1
                        elif len(found) < query.limit:
                            found.append(task)
            return found

        return await self._call(f"listing tasks of tenant {query.tenant}", scan)

    async def claim_task(self, worker: str, *, now: float, lease_timeout: float
                         ) -> TaskRecord | None:
        """Atomically take the queued task of highest priority (oldest first, then by id),
        or a running one whose lease expired before ``now`` if it comes first in that order
        (one Lua script; of the expired ones, the 100 with the oldest expiry are looked at).

        Returns:
            the claimed task (``running``, ``worker``, lease until ``now + lease_timeout``,
            ``attempts`` + 1, ``started_at`` set once), or None when nothing is claimable.

        Raises:
            ValueError: ``lease_timeout`` is not positive.
        """
        if not lease_timeout > 0:
            raise ValueError(f"lease_timeout must be > 0 seconds, got {lease_timeout!r}")
        keys = [self.k("tasks", "queued"), self.k("tasks", "leased")]
        args = [_num(now), json.dumps(worker), _num(now + lease_timeout), self.k("task", "")]
        answer = await self._call("claiming a task", lambda c: (
            self._script("claim_task")(keys=keys, args=args)), retry=False)
        if not answer:
            return None
        return self._task_from(answer[1:], _text(answer[0], keys[0]))

    async def renew_task(self, task_id: str, worker: str, *, now: float,
                         lease_timeout: float) -> TaskRecord | None:
        """Extend ``worker``'s lease to ``now + lease_timeout``.

        Returns:
            the task, or None when ``worker`` does not hold it.

        Raises:
            TaskNotFoundError: no such task.
        """
        keys = [self._task_key(task_id), self.k("tasks", "leased")]
        args = [json.dumps(worker), _num(now + lease_timeout), task_id]
        answer = await self._call(f"renewing task {task_id}", lambda c: (
            self._script("renew_task")(keys=keys, args=args)))
        if answer[0] == b"missing":
            raise TaskNotFoundError(f"no task {task_id!r}")
        if answer[0] == b"lost":
            return None
        return self._task_from(answer[1:], task_id)

    async def finish_task(self, task_id: str, worker: str, *, status: str,
                          outputs: dict[str, Any] | None = None, error: str | None = None,
                          now: float) -> bool:
        """Record the end of a task ``worker`` holds and release its lease.

        Returns:
            False (nothing written) when ``worker`` does not hold the task.

        Raises:
            ValueError: ``status`` is not an end status.
            StorageError: ``outputs`` is not JSON-ready (nothing written).
        """
        if status not in ("completed", "failed", "cancelled"):
            raise ValueError(f"a task ends completed, failed or cancelled, not {status!r}")
        keys = [self._task_key(task_id), self.k("tasks", "leased")]
        args = [json.dumps(worker), json.dumps(status),
                _dumps(outputs or {}, f"outputs of task {task_id}"), json.dumps(error),
                _num(now), task_id]
        return bool(await self._call(f"finishing task {task_id}", lambda c: (
            self._script("finish_task")(keys=keys, args=args)), retry=False))

    async def cancel_task(self, task_id: str, *, now: float) -> TaskRecord:
        """Cancel a queued task at once, or ask a running one's worker to stop; an ended
        task is returned unchanged.

        Raises:
            TaskNotFoundError: no such task.
        """
        keys = [self._task_key(task_id), self.k("tasks", "queued")]
        answer = await self._call(f"cancelling task {task_id}", lambda c: (
            self._script("cancel_task")(keys=keys, args=[_num(now)])))
        if not answer:
            raise TaskNotFoundError(f"no task {task_id!r}")
        return self._task_from(answer, task_id)

    async def retry_task(self, task_id: str) -> TaskRecord:
        """Queue a failed or cancelled task again (same run id); others are returned as
        they are.

        Raises:
            TaskNotFoundError: no such task.
        """
        keys = [self._task_key(task_id), self.k("tasks", "queued")]
        answer = await self._call(f"retrying task {task_id}", lambda c: (
            self._script("retry_task")(keys=keys, args=[])))
        if not answer:
            raise TaskNotFoundError(f"no task {task_id!r}")
        return self._task_from(answer, task_id)

    # ------------------------------------------------------------------ audit log

    def _audit_from(self, raw: bytes, seq: int) -> AuditRecord:
        key = f"{self.k('audit')} (seq {seq})"
        try:
            return audit_from_json(_text(raw, key))
        except ValueError as exc:
            raise StorageError(f"damaged audit record under Redis key {key}: {exc}") from None

    async def append_audit(self, records: Sequence[AuditRecord]) -> list[AuditRecord]:
        """Append records to the hash chain, all or none. Appends are serialised with an
        optimistic transaction (``WATCH`` on the head's seq, retried when another writer
        appended in between), so the chain never forks across processes.

        Returns:
            the records as stored (``seq``, ``prev_hash``, ``hash`` set).

        Raises:
            StorageError: a record is not JSON-ready (nothing stored), or Redis failed.
        """
        import redis

        if not records:
            return []
        seq_key, log_key = self.k("audit", "seq"), self.k("audit")

        def append(c: Any) -> list[AuditRecord]:
            while True:
                with c.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(seq_key)
                        head_seq = int(pipe.get(seq_key) or 0)
                        head = None
                        if head_seq:
                            raw = pipe.hget(log_key, str(head_seq))
                            if raw is None:
                                raise StorageError(f"audit head {head_seq} is missing from "
                                                   f"Redis key {log_key!r}")
                            head = self._audit_from(raw, head_seq)
                        chained = chain_audit(records, head)
                        pipe.multi()
                        pipe.hset(log_key, mapping={str(r.seq): audit_to_json(r)
                                                    for r in chained})
                        pipe.set(seq_key, chained[-1].seq)
                        pipe.execute()
                        return chained
                    except redis.WatchError:
                        continue

        return await self._call("appending to the audit log", append, retry=False)

    async def list_audit(self, *, after_seq: int = 0, limit: int = 1000
                         ) -> list[AuditRecord]:
        """Return up to ``limit`` records with ``seq > after_seq``, in ``seq`` order."""
        seq_key, log_key = self.k("audit", "seq"), self.k("audit")

        def read(c: Any) -> list[tuple[int, bytes]]:
            head = int(c.get(seq_key) or 0)
            seqs = list(range(after_seq + 1, min(head, after_seq + limit) + 1))
            if not seqs:
                return []
            raws = c.hmget(log_key, [str(s) for s in seqs])
            return [(s, raw) for s, raw in zip(seqs, raws, strict=True) if raw is not None]

        return [self._audit_from(raw, seq)
                for seq, raw in await self._call("listing the audit log", read)]

    async def get_audit(self, seq: int) -> AuditRecord | None:
        """Return the record ``seq``, or None."""
        log_key = self.k("audit")
        raw = await self._call("reading the audit log", lambda c: c.hget(log_key, str(seq)))
        return None if raw is None else self._audit_from(raw, seq)

    async def audit_head(self) -> AuditRecord | None:
        """Return the record with the highest ``seq``, or None when the log is empty."""
        seq_key = self.k("audit", "seq")
        head = int(await self._call("reading the audit head", lambda c: c.get(seq_key)) or 0)
        return await self.get_audit(head) if head else None
