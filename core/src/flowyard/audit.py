"""The tamper-evident audit log: records, their hash chain, verification, and the listener
that turns run events into records.

Chain: record ``n`` holds ``prev_hash`` (the ``hash`` of record ``n - 1``, or
:data:`GENESIS_HASH` for record 1) and ``hash`` = SHA-256 of its canonical JSON (every field
but ``hash``, keys sorted, no spaces, UTF-8; see :func:`canonical_audit_json`). Removing,
reordering or altering a record therefore breaks the chain at that record, which
:func:`verify_audit` reports by sequence number and reason. Removing records at the *end*
leaves a valid shorter chain: compare the head that ``flowyard audit verify`` prints with a
copy kept elsewhere (``--expect-head``) to detect that.

Records are written by :class:`AuditListener` (the ``audit`` event listener of the built-in
plugin): it buffers records on the engine's hot path and appends them in batches from a
background task, through the storage backend's
:class:`~flowyard.interfaces.SupportsAuditLog`. See docs/audit.md.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from flowyard.errors import RunNotFoundError, StorageError
from flowyard.interfaces import SupportsAuditLog
from flowyard.models import AuditRecord, Event

if TYPE_CHECKING:
    from flowyard.interfaces import Services

__all__ = [
    "GENESIS_HASH",
    "AuditListener",
    "AuditVerification",
    "audit_from_json",
    "audit_to_json",
    "canonical_audit_json",
    "chain_audit",
    "hash_audit",
    "local_actor",
    "redact_command",
    "redact_url",
    "replace_audit",
    "tool_resource",
    "verify_audit",
    "verify_audit_records",
]

log = logging.getLogger(__name__)

#: The ``prev_hash`` of the first record.
GENESIS_HASH = "0" * 64

_FIELDS = tuple(a.name for a in attrs.fields(AuditRecord))
_HASHED = tuple(name for name in _FIELDS if name != "hash")


def replace_audit(record: AuditRecord, **changes: Any) -> AuditRecord:
    """Return a copy of ``record`` with ``changes`` (:func:`attrs.evolve`, at a third of its
    cost: records are copied several times on their way to storage).
    """
    values = {name: getattr(record, name) for name in _FIELDS}
    values.update(changes)
    return AuditRecord(**values)


def canonical_audit_json(record: AuditRecord) -> bytes:
    """Return the canonical JSON of ``record`` that its hash covers: every field but
    ``hash``, keys sorted, no whitespace, UTF-8.

    Raises:
        StorageError: the record's details are not JSON-ready.
    """
    payload = {name: getattr(record, name) for name in _HASHED}
    try:
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"audit record {record.action!r} is not JSON-ready: {exc}") from None
    return text.encode("utf-8")


def hash_audit(record: AuditRecord) -> str:
    """Return the SHA-256 (hex) of :func:`canonical_audit_json` of ``record``."""
    return hashlib.sha256(canonical_audit_json(record)).hexdigest()


def chain_audit(records: Sequence[AuditRecord], head: AuditRecord | None
                ) -> list[AuditRecord]:
    """Return ``records`` chained after ``head``: ``seq`` from ``head.seq + 1`` (1 when the
    log is empty), each ``prev_hash`` the hash before it, each ``hash`` computed. Backends
    call this inside the transaction that serialises appends.

    Args:
        records: the records to append (their ``seq``/``prev_hash``/``hash`` are ignored).
        head: the last stored record, or None when the log is empty.

    Returns:
        the chained records, in order.

    Raises:
        StorageError: a record is not JSON-ready.
    """
    seq = head.seq if head is not None else 0
    prev = head.hash if head is not None else GENESIS_HASH
    chained = []
    for record in records:
        seq += 1
        payload = {name: getattr(record, name) for name in _HASHED}
        payload["seq"] = seq
        payload["prev_hash"] = prev
        try:
            text = json.dumps(payload, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StorageError(f"audit record {record.action!r} is not JSON-ready: "
                               f"{exc}") from None
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        # the stored details are a copy as JSON gives it back (what verification hashes)
        details = json.loads(text)["details"]
        payload["details"] = details
        chained.append(AuditRecord(**payload, hash=digest))
        prev = digest
    return chained


def audit_to_json(record: AuditRecord) -> str:
    """Return ``record`` as one line of JSON (every field; the export format)."""
    return json.dumps({name: getattr(record, name) for name in _FIELDS}, sort_keys=True,
                      ensure_ascii=False, allow_nan=False)


def audit_from_json(line: str) -> AuditRecord:
    """Return the record of one exported JSON line (:func:`audit_to_json`).

    Raises:
        ValueError: the line is not a JSON object of exactly the record's fields.
    """
    data = json.loads(line)
    if not isinstance(data, dict) or set(data) != set(_FIELDS):
        raise ValueError(f"not an audit record: expected the fields {sorted(_FIELDS)}")
    return AuditRecord(**data)


# ----------------------------------------------------------------------------- verification


@attrs.frozen
class AuditVerification:
    """The result of verifying an audit chain.

    Args:
        ok: True when every record checked is intact and in place.
        checked: how many records were read.
        bad_seq: the sequence number of the first bad record (or where a missing one
            should be), None when ok.
        reason: why that record is bad, None when ok.
        head_seq, head_hash: the last intact record's ``seq`` and ``hash`` (0 and
            :data:`GENESIS_HASH` for an empty log): keep them elsewhere to detect a
            truncated tail later.
    """

    ok: bool
    checked: int
    bad_seq: int | None = None
    reason: str | None = None
    head_seq: int = 0
    head_hash: str = GENESIS_HASH


class _Verifier:
    """Checks records one at a time, in the order given."""

    def __init__(self) -> None:
        self.expected_seq = 1
        self.prev_hash = GENESIS_HASH
        self.checked = 0
        self.bad: AuditVerification | None = None

    def feed(self, record: AuditRecord) -> bool:
        self.checked += 1
        seq = self.expected_seq
        if record.seq != seq:
            if record.seq > seq:
                why = (f"record {seq} is missing (the next stored record is {record.seq})"
                       if seq > 1 else f"the chain does not start at record 1 (it starts at "
                                       f"{record.seq}: its head was removed)")
            else:
                why = f"records out of order: record {record.seq} comes after {seq - 1}"
            return self._fail(seq, why)
        if record.prev_hash != self.prev_hash:
            what = "the genesis hash" if seq == 1 else f"record {seq - 1}'s hash"
            return self._fail(seq, f"prev_hash does not match {what} (a record before it was "
                                   f"removed, reordered or altered)")
        try:
            actual = hash_audit(record)
        except StorageError as exc:
            return self._fail(seq, f"the record cannot be hashed: {exc}")
        if actual != record.hash:
            return self._fail(seq, "hash mismatch: the record was altered")
        self.expected_seq += 1
        self.prev_hash = record.hash
        return True

    def _fail(self, seq: int, reason: str) -> bool:
        self.bad = AuditVerification(ok=False, checked=self.checked, bad_seq=seq, reason=reason,
                                     head_seq=self.expected_seq - 1, head_hash=self.prev_hash)
        return False

    def result(self) -> AuditVerification:
        if self.bad is not None:
            return self.bad
        return AuditVerification(ok=True, checked=self.checked, head_seq=self.expected_seq - 1,
                                 head_hash=self.prev_hash)


def verify_audit_records(records: Iterable[AuditRecord]) -> AuditVerification:
    """Verify a whole chain given in stored order (``seq`` ascending), from the genesis.

    Returns:
        the verification: the first bad record's ``seq`` and why, or ok with the head.
    """
    verifier = _Verifier()
    for record in records:
        if not verifier.feed(record):
            break
    return verifier.result()


async def verify_audit(storage: SupportsAuditLog, *, page: int = 1000) -> AuditVerification:
    """Verify the audit log of ``storage`` from the genesis, reading ``page`` records at a
    time.

    Returns:
        the verification (see :func:`verify_audit_records`).

    Raises:
        StorageError: the backend failed.
    """
    verifier = _Verifier()
    async for record in _all_records(storage, page):
        if not verifier.feed(record):
            break
    return verifier.result()


async def _all_records(storage: SupportsAuditLog, page: int) -> AsyncIterator[AuditRecord]:
    after = 0
    while True:
        batch = await storage.list_audit(after_seq=after, limit=page)
        if not batch:
            return
        for record in batch:
            yield record
        # a damaged seq must not loop forever: move past the highest seen
        after = max(after, *(r.seq for r in batch))
        if len(batch) < page:
            return


# ----------------------------------------------------------------------------- resources

_SECRET_WORDS = r"(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|auth|authorization|" \
                r"credential|private[_-]?key|access[_-]?key)"
_VALUE = r"(\"[^\"]*\"|'[^']*'|\S+)"
_SECRET_ASSIGN = re.compile(rf"(?i)([\w.-]*{_SECRET_WORDS}[\w.-]*\s*[=:]\s*){_VALUE}")
_SECRET_FLAG = re.compile(rf"(?i)(--?[\w-]*{_SECRET_WORDS}[\w-]*\s+){_VALUE}")
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}")
_KEYLIKE = re.compile(r"\b(?:sk|pk|rk|fy|ghp|gho|xox[abp]|AKIA)[-_][A-Za-z0-9_-]{8,}\b"
                      r"|\bAKIA[A-Z0-9]{12,}\b")
_WORD = re.compile(r"[^\s]+")
_TOKEN_MIN = 20
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_.+=:-]+")
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+")
_MAX_RESOURCE = 1000


def redact_url(url: str) -> str:
    """Return ``url`` without what may hold a secret: the user and password, the query's
    values (the names are kept: ``?token=***``), the fragment, and path segments that look
    like a key or token (20 or more characters mixing letters and digits, as a bot token in
    ``/bot<token>/sendMessage``).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    query = "&".join(f"{pair.split('=', 1)[0]}=***" if "=" in pair else "***"
                     for pair in parts.query.split("&") if pair) if parts.query else ""
    path = "/".join(_mask_token(segment) for segment in parts.path.split("/"))
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def _mask_token(part: str) -> str:
    """``***`` for a word that looks like a key or token (see :func:`redact_command`)."""
    bare = part.strip("'\"")
    if (len(bare) >= _TOKEN_MIN and "/" not in bare and "*" not in bare
            and _TOKEN_CHARS.fullmatch(bare) and any(c.isdigit() for c in bare)
            and any(c.isalpha() for c in bare)):
        return "***"
    return part


def _mask_tokens(text: str) -> str:
    return _WORD.sub(lambda m: "=".join(_mask_token(p) for p in m.group(0).split("=")), text)


def redact_command(command: str) -> str:
    """Return a command line with what looks like a secret replaced by ``***``: values of
    ``password=``/``token:``-like assignments and ``--api-key X``-like flags, ``Bearer``
    credentials, well-known key prefixes (``sk-``, ``ghp_``, ``AKIA``...), the credentials
    and query values of URLs in it, and any word (or ``name=value`` value) of 20 or more
    characters mixing letters and digits without a ``/`` (keys, tokens, hex and base64
    strings, such as a stolen secret an injected agent tries to send; paths are kept).
    """
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), command)
    text = _BEARER.sub(lambda m: f"{m.group(1)} ***", text)
    text = _SECRET_FLAG.sub(lambda m: f"{m.group(1)}***", text)
    text = _SECRET_ASSIGN.sub(lambda m: f"{m.group(1)}***", text)
    return _mask_tokens(_KEYLIKE.sub("***", text))


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_RESOURCE else text[:_MAX_RESOURCE] + "..."


def tool_resource(tool: str, arguments: Mapping[str, Any]) -> str | None:
    """Return what a tool call acts on, for the audit log, from its arguments: a file path
    (``path``, or ``source -> destination``), a command line (``command``, a string or an
    argument list, redacted with :func:`redact_command`), a URL (``url``, redacted with
    :func:`redact_url`) or a ``script`` path; None when the call names none of these.
    Content (what is written, fetched or run as code) is never part of it.
    """
    url = arguments.get("url")
    if isinstance(url, str):
        return _clip(redact_url(url))
    command = arguments.get("command")
    if isinstance(command, (list, tuple)):
        command = " ".join(str(part) for part in command)
    if isinstance(command, str):
        return _clip(redact_command(command))
    source, destination = arguments.get("source"), arguments.get("destination")
    if isinstance(source, str) and isinstance(destination, str):
        return _clip(f"{source} -> {destination}")
    for name in ("path", "script", "pattern"):
        value = arguments.get(name)
        if isinstance(value, str):
            return _clip(value)
    if tool == "python.run" and isinstance(arguments.get("code"), str):
        return "<inline code>"
    return None


def _action_of(tool: str) -> str:
    """The audit action of a tool call: ``file.<op>``, ``command.run``, ``url.fetch``,
    ``web.search`` or ``tool.call``.
    """
    if tool.startswith("filesystem."):
        return "file." + tool.split(".", 1)[1]
    if tool in ("shell.run", "python.run"):
        return "command.run"
    if tool == "web.fetch":
        return "url.fetch"
    if tool == "web.search":
        return "web.search"
    return "tool.call"


def local_actor() -> str:
    """Return ``"user:<OS user>"`` for the process running flowyard locally
    (:func:`getpass.getuser`), or ``"uid:<number>"`` when the OS has no name for the process's
    user (a container running as a uid without a passwd entry or ``USER`` variable).
    """
    try:
        return f"user:{getpass.getuser()}"
    except (OSError, KeyError):  # no name: the numeric id still says who
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "user:unknown"


# ----------------------------------------------------------------------------- listener

#: Event types the listener records.
AUDITED_EVENTS = frozenset({"tool.call", "guard.denied", "keystore.used"})
_MAX_ERROR = 500


class AuditListener:
    """The ``audit`` event listener: one audit record per security-relevant event.

    * ``tool.call`` -> ``file.<op>`` (filesystem tools), ``command.run`` (``shell.run``,
      ``python.run``), ``url.fetch`` (``web.fetch``), ``web.search`` or ``tool.call``, with
      the resource (the event's ``resource``: path, redacted command or URL), outcome
      ``ok``/``error`` and details ``tool``, ``side_effects``, ``agent``, ``error``
      (redacted, at most 500 characters);
    * ``guard.denied`` ({guard, target, reason, step_id}) -> ``policy.denied``, outcome
      ``denied``, resource the target;
    * ``keystore.used`` ({name}) -> ``key.used``, resource the key's name.

    Who: the run's ``metadata["actor"]`` (``{"actor": ..., "tenant": ...}``, set by
    flowyard-server at submission; read once per run and cached), else
    :func:`local_actor`.

    ``__call__`` only buffers (the engine's hot path); a background task of the running event
    loop appends the buffer ``flush_interval`` seconds after its first record, in one batch,
    through the storage's :class:`~flowyard.interfaces.SupportsAuditLog`, in event order.
    :meth:`flush` writes what is buffered now; :meth:`aclose` (called by ``Stack.aclose``
    before the storage closes) flushes and raises when records could not be written. A
    failed append is logged and its records stay buffered for the next flush.

    Args:
        services: the stack (its storage and event loop).
        flush_interval: seconds records gather before they are appended (``[audit]
            flush_interval``, default 0.1): fewer, larger transactions; a process that dies
            loses at most the records of that window.

    Raises:
        ValueError: ``flush_interval`` is negative.
    """

    def __init__(self, services: Services, *, flush_interval: float = 0.1) -> None:
        if flush_interval < 0:
            raise ValueError(f"flush_interval must be >= 0, got {flush_interval}")
        self.services = services
        self.flush_interval = flush_interval
        self._buffer: list[AuditRecord] = []
        self._actors: dict[str, tuple[str, str | None]] = {}
        self._local: str | None = None
        self._scheduled = False  # a background flush is pending
        self._writing = False  # an append is running
        self._tasks: set[Any] = set()
        #: records appended so far (for tests and benchmarks)
        self.written = 0

    # -- the hot path

    def __call__(self, event: Event) -> None:
        """Buffer the audit record of ``event`` when it is audited, and schedule a flush."""
        if event.type not in AUDITED_EVENTS:
            return
        self.record(self._record_of(event))

    def record(self, record: AuditRecord) -> None:
        """Buffer ``record`` (an actor of ``""`` is resolved from its run at flush) and
        schedule a flush on the running event loop, ``flush_interval`` seconds from now (none
        running: at the next flush).
        """
        self._buffer.append(record)
        if not self._scheduled:
            self._schedule()

    def _record_of(self, event: Event) -> AuditRecord:
        data = event.data
        step = event.step_id
        run = event.run_id or None
        if event.type == "tool.call":
            tool = str(data.get("tool", ""))
            error = data.get("error")
            details: dict[str, Any] = {"tool": tool,
                                       "side_effects": list(data.get("side_effects") or ())}
            if data.get("agent"):
                details["agent"] = data["agent"]
            if error:
                details["error"] = _clip_error(str(error))
            resource = data.get("resource")
            return AuditRecord(action=_action_of(tool), actor="", resource=str(resource or tool),
                               outcome="ok" if data.get("ok") else "error", time=event.time,
                               run_id=run, step_id=step, details=details)
        if event.type == "guard.denied":
            return AuditRecord(action="policy.denied", actor="",
                               resource=str(data.get("target", "")), outcome="denied",
                               time=event.time, run_id=run,
                               step_id=data.get("step_id") or step,
                               details={"guard": str(data.get("guard", "")),
                                        "reason": _clip_error(str(data.get("reason", "")))})
        return AuditRecord(action="key.used", actor="", resource=str(data.get("name", "")),
                           time=event.time, run_id=run, step_id=step)

    def _schedule(self) -> None:
        import sniffio

        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            return  # no event loop: the next flush (or aclose) writes the buffer
        self._scheduled = True
        if library == "trio":
            import trio

            trio.lowlevel.spawn_system_task(self._drain)
            return
        import asyncio

        task = asyncio.get_running_loop().create_task(self._drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the background writer

    async def _drain(self) -> None:
        import anyio

        try:
            await anyio.sleep(self.flush_interval)  # let records gather into one append
            await self.flush()
        except Exception:
            log.exception("the audit log could not append %d record(s); they stay buffered "
                          "for the next flush", len(self._buffer))
            self._scheduled = False
            return
        self._scheduled = False
        if self._buffer:  # arrived while the last append ran
            self._schedule()

    async def _write(self) -> None:
        batch, self._buffer = self._buffer, []
        try:
            storage = self.services.storage
            if not isinstance(storage, SupportsAuditLog):
                raise StorageError(f"the storage backend {type(storage).__name__} keeps no "
                                   "audit log (no SupportsAuditLog); set [audit] enabled = "
                                   "false to run without one")
            resolved = [await self._with_actor(r) for r in batch]
            await storage.append_audit(resolved)
        except BaseException:
            self._buffer[:0] = batch
            raise
        self.written += len(batch)

    async def _with_actor(self, record: AuditRecord) -> AuditRecord:
        if record.actor:
            return record
        actor, tenant = await self._actor_of(record.run_id)
        return replace_audit(record, actor=actor, tenant=tenant)

    async def _actor_of(self, run_id: str | None) -> tuple[str, str | None]:
        if run_id is not None:
            cached = self._actors.get(run_id)
            if cached is not None:
                return cached
            try:
                run = await self.services.storage.get_run(run_id)
            except RunNotFoundError:
                run = None
            meta = run.metadata.get("actor") if run is not None else None
            if isinstance(meta, dict) and isinstance(meta.get("actor"), str):
                tenant = meta.get("tenant")
                found = (meta["actor"], tenant if isinstance(tenant, str) else None)
            else:
                found = (self._local_actor(), None)
            if len(self._actors) >= 10_000:
                self._actors.clear()
            self._actors[run_id] = found
            return found
        return self._local_actor(), None

    def _local_actor(self) -> str:
        if self._local is None:
            self._local = local_actor()
        return self._local

    async def flush(self) -> None:
        """Append every buffered record now (after an append that is running).

        Raises:
            StorageError: the storage keeps no audit log, or the append failed (the records
                stay buffered).
        """
        import anyio

        while self._writing:
            await anyio.sleep(0.001)
        self._writing = True
        try:
            while self._buffer:
                await self._write()
        finally:
            self._writing = False

    async def aclose(self) -> None:
        """Flush the buffer (``Stack.aclose`` calls this before closing the storage).

        Raises:
            StorageError: records could not be written.
        """
        if self._buffer or self._writing:
            await self.flush()

    @property
    def pending(self) -> int:
        """How many records wait to be appended."""
        return len(self._buffer)


def _clip_error(text: str) -> str:
    text = redact_command(text)
    return text if len(text) <= _MAX_ERROR else text[:_MAX_ERROR] + "..."
