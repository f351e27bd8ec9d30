"""Run leases: one live process executes a run at a time, and a dead one is recognised.

When a run starts (or is resumed) its process claims the run's
:class:`~flowyard.interfaces.RunLease` in storage: who it is (host, pid, a random owner token,
the process's start time) and a heartbeat. While the run executes, a background task renews
the heartbeat every ``runs.heartbeat_interval`` seconds (default 5) with one small write; the
lease expires ``runs.lease_timeout`` seconds (default 30) after the last heartbeat. The lease
is released when the run ends.

A stored run whose status is ``running`` but that no live process holds is *abandoned*: its
lease expired, or its owner was a process of this machine that no longer exists (or whose pid
now belongs to another process), or it has no lease at all. The stored status is not changed;
``flowyard runs list|show`` and ``flowyard stats`` show the derived state (:func:`run_state`),
and ``flowyard resume`` claims the run (:meth:`LeaseKeeper.claim`) -- refused with
:class:`RunInUseError` while a live owner holds it.

A process that loses its lease while still running (it was frozen longer than the lease, and
another process resumed the run) notices at its next heartbeat, stops executing the run
without writing to it any more, and raises :class:`RunLeaseLostError`.

Times are UNIX seconds (UTC), durations seconds.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.lowlevel
import attrs

from flowyard.errors import ConfigError, StorageError, WorkflowError
from flowyard.interfaces import RunLease
from flowyard.models import new_id

if TYPE_CHECKING:
    from flowyard.config import Config
    from flowyard.interfaces import StorageBackend
    from flowyard.models import RunRecord

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_LEASE_TIMEOUT",
    "LeaseSettings",
    "LeaseKeeper",
    "LeaseState",
    "RunInUseError",
    "RunLeaseLostError",
    "ProcessIdentity",
    "lease_state",
    "run_state",
    "describe_lease",
]

T = TypeVar("T")
log = logging.getLogger("flowyard.engine")

#: Seconds between two heartbeats of a running run (``runs.heartbeat_interval``).
DEFAULT_HEARTBEAT_INTERVAL = 5.0
#: Seconds after its last heartbeat when a run's lease expires (``runs.lease_timeout``).
DEFAULT_LEASE_TIMEOUT = 30.0

#: ``live``: a process holds the lease and renews it; ``expired``: no heartbeat for longer
#: than the lease timeout; ``dead``: the owner was a process of this machine that is gone.
LeaseState = Literal["live", "expired", "dead"]


def describe_lease(lease: RunLease, now: float | None = None) -> str:
    """Return ``"host H, pid P, last heartbeat N.N s ago"`` for messages."""
    now = time.time() if now is None else now
    return (f"host {lease.host}, pid {lease.pid}, last heartbeat "
            f"{max(0.0, now - lease.heartbeat_at):.1f} s ago")


class RunInUseError(WorkflowError):
    """The run is being executed by a live process: it was not resumed (running it twice at
    once would run its steps twice).

    Attributes:
        run_id: the run.
        lease: the live owner's lease (host, pid, heartbeat).
    """

    def __init__(self, run_id: str, lease: RunLease, now: float | None = None) -> None:
        now = time.time() if now is None else now
        super().__init__(
            f"run {run_id} is being executed by a live process ({describe_lease(lease, now)}"
            f"); it was not resumed. Wait for that process to finish, or stop it: once it is "
            f"gone, or its lease expires (in {max(0.0, lease.expires_at - now):.0f} s without "
            "a heartbeat), the run is abandoned and can be resumed")
        self.run_id = run_id
        self.lease = lease


class RunLeaseLostError(WorkflowError):
    """This process lost a run's lease while executing it (it missed its heartbeats for longer
    than the lease timeout and another process took the run over); it stopped executing the
    run and wrote nothing more to it.

    Attributes:
        run_id: the run.
        holder: the lease now in force (None when the run has no lease any more).
    """

    def __init__(self, run_id: str, holder: RunLease | None) -> None:
        who = (f"another process holds it now ({describe_lease(holder)})" if holder is not None
               else "it has no lease any more")
        super().__init__(
            f"run {run_id}: this process lost the run's lease (no heartbeat recorded within "
            f"the lease timeout) and stopped executing it; {who}")
        self.run_id = run_id
        self.holder = holder


@attrs.frozen
class LeaseSettings:
    """Heartbeat interval and lease timeout, in seconds.

    Raises:
        ConfigError: a value is not a positive number, or the timeout is not longer than the
            interval.
    """

    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    lease_timeout: float = DEFAULT_LEASE_TIMEOUT

    def __attrs_post_init__(self) -> None:
        if not (self.heartbeat_interval > 0 and self.lease_timeout > 0):
            raise ConfigError(
                "runs.heartbeat_interval and runs.lease_timeout must be positive seconds, got "
                f"{self.heartbeat_interval!r} and {self.lease_timeout!r}")
        if self.lease_timeout <= self.heartbeat_interval:
            raise ConfigError(
                f"runs.lease_timeout ({self.lease_timeout:g} s) must be longer than "
                f"runs.heartbeat_interval ({self.heartbeat_interval:g} s), or a live run "
                "would look abandoned between two heartbeats; a few intervals is usual")

    @classmethod
    def from_config(cls, config: Config) -> LeaseSettings:
        """Read ``runs.heartbeat_interval`` and ``runs.lease_timeout`` (seconds).

        Raises:
            ConfigError: a value is not a number, not positive, or the timeout is not longer
                than the interval.
        """
        values: dict[str, float] = {}
        for key, default in (("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL),
                             ("lease_timeout", DEFAULT_LEASE_TIMEOUT)):
            raw = config.get(f"runs.{key}", default)
            try:
                if isinstance(raw, bool):
                    raise ValueError
                values[key] = float(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"runs.{key} must be a number of seconds, got {raw!r}"
                                  ) from None
        return cls(**values)


# ----------------------------------------------------------------------------- processes


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """Return (state, start time in clock ticks since boot) of ``pid`` from /proc, or None
    when there is no such process.
    """
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; cut at the last ')'
    fields = text[text.rfind(")") + 2:].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]


@attrs.frozen
class ProcessIdentity:
    """Who a process is, as recorded in the leases it claims.

    Attributes:
        host: the host name.
        pid: the process id.
        host_id: the machine and pid namespace (Linux: ``<boot id>/<pid namespace>``; other
            POSIX systems: ``<platform>:<host name>``; ``""`` where pids cannot be checked, such
            as Windows or a Linux without a readable /proc).
        process_start: the process's start time in clock ticks since boot (Linux), else ``""``.
    """

    host: str
    pid: int
    host_id: str
    process_start: str

    @classmethod
    def current(cls) -> ProcessIdentity:
        """The identity of this process (computed once per pid: a forked child gets its own)."""
        pid = os.getpid()
        cached = _IDENTITY.get(pid)
        if cached is None:
            cached = _IDENTITY[pid] = cls._compute(pid)
        return cached

    @classmethod
    def _compute(cls, pid: int) -> ProcessIdentity:
        host = socket.gethostname()
        if sys.platform.startswith("linux"):
            boot = _read("/proc/sys/kernel/random/boot_id")
            try:
                namespace = os.readlink("/proc/self/ns/pid")
            except OSError:
                namespace = None
            stat = _proc_stat(pid)
            if boot and namespace and stat:
                return cls(host, pid, f"{boot.strip()}/{namespace}", stat[1])
            return cls(host, pid, "", "")
        if os.name == "posix":
            return cls(host, pid, f"{sys.platform}:{host}", "")
        return cls(host, pid, "", "")

    def same_machine(self, lease: RunLease) -> bool:
        """True when ``lease``'s owner ran where this process can check its pid."""
        return bool(self.host_id) and lease.host_id == self.host_id

    def owner_alive(self, lease: RunLease) -> bool | None:
        """Whether ``lease``'s owner process still exists: None when it cannot be told (another
        machine, or an unknown platform); False when its pid is gone, is a zombie, or belongs
        to a process started at another time (a reused pid).
        """
        if not self.same_machine(lease):
            return None
        if lease.pid == self.pid:
            return not lease.process_start or lease.process_start == self.process_start
        if not sys.platform.startswith("linux"):  # another POSIX system (see _compute)
            try:
                os.kill(lease.pid, 0)  # POSIX only: signal 0 checks existence, sends nothing
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        stat = _proc_stat(lease.pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        return not lease.process_start or stat[1] == lease.process_start


_IDENTITY: dict[int, ProcessIdentity] = {}


def lease_state(lease: RunLease, *, now: float | None = None,
                me: ProcessIdentity | None = None) -> LeaseState:
    """Classify ``lease``: ``"expired"`` (no heartbeat within its timeout), ``"dead"`` (its
    owner was a process of this machine that is gone) or ``"live"``.

    Args:
        lease: a stored lease.
        now: UNIX seconds (default: the current time).
        me: the identity to check pids from (default: this process's).
    """
    now = time.time() if now is None else now
    if lease.expired(now):
        return "expired"
    if (me or ProcessIdentity.current()).owner_alive(lease) is False:
        return "dead"
    return "live"


def run_state(run: RunRecord, lease: RunLease | None, *, now: float | None = None,
              me: ProcessIdentity | None = None) -> str:
    """Return the state to show for a stored run: its status, or ``"abandoned"`` when the
    status is ``running`` and no live process holds the run's lease.

    Public as ``flowyard.run_state``: listings such as ``flowyard runs`` and the
    ``flowyard-stats`` command use it.

    Args:
        run: the stored run.
        lease: the run's stored lease (``storage.get_leases``), None when it holds none.
        now: the time to judge expiry at, UNIX seconds (default: the current time).
        me: this process's identity (default: detected), to check a lease held on this host.

    Returns:
        ``run.status``, or ``"abandoned"`` for a ``running`` run without a live lease.
    """
    if run.status != "running":
        return run.status
    if lease is None or lease_state(lease, now=now, me=me) != "live":
        return "abandoned"
    return "running"


# ----------------------------------------------------------------------------- keeping


class LeaseKeeper:
    """Claims, renews and releases the lease of one run for this process.

    Args:
        storage: an opened storage backend.
        run_id: the run.
        settings: heartbeat interval and lease timeout.
    """

    def __init__(self, storage: StorageBackend, run_id: str, settings: LeaseSettings) -> None:
        self.storage = storage
        self.run_id = run_id
        self.settings = settings
        self.lease: RunLease | None = None
        #: True once the lease was lost to another process (the run must write nothing more)
        self.lost = False
        #: the lease in force when it was lost (None: unknown, or the run has none)
        self.holder: RunLease | None = None
        self._scope: anyio.CancelScope | None = None
        self._heartbeat_error: Exception | None = None
        # ensure() asks storage only when the last heartbeat is this close to the expiry
        self._margin = min(settings.heartbeat_interval,
                           (settings.lease_timeout - settings.heartbeat_interval) / 2)

    async def claim(self) -> RunLease:
        """Claim the run's lease for this process: allowed when the run has no lease, when its
        lease expired, or when its owner was a process of this machine that is gone.

        Returns:
            the claimed lease.

        Raises:
            RunInUseError: a live owner holds the run.
            RunNotFoundError: no such run.
            StorageError: the backend failed.
        """
        me = ProcessIdentity.current()
        now = time.time()
        current = (await self.storage.get_leases([self.run_id])).get(self.run_id)
        replace = None
        if current is not None and lease_state(current, now=now, me=me) == "dead":
            replace = current.owner
        lease = RunLease(run_id=self.run_id, owner=new_id(), host=me.host, pid=me.pid,
                         host_id=me.host_id, process_start=me.process_start, acquired_at=now,
                         heartbeat_at=now, expires_at=now + self.settings.lease_timeout)
        held = await self.storage.claim_lease(lease, now=now, replace_owner=replace)
        if held.owner != lease.owner:
            raise RunInUseError(self.run_id, held, now)
        self.lease = lease
        return lease

    async def hold(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run ``body()`` while a background task renews the claimed lease every
        ``heartbeat_interval`` seconds, then release the lease.

        Returns:
            what ``body()`` returns.

        Raises:
            RunLeaseLostError: another process took the run over meanwhile (``body`` was
                cancelled, or finished without writing its end).
            Exception: whatever ``body()`` raises; or what the storage backend raised when
                renewing the lease, other than ``StorageError`` (a backend bug: ``body`` was
                cancelled, since the lease could no longer be kept).
        """
        assert self.lease is not None, "claim() the lease first"
        failure: Exception | None = None
        result: Any = None
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                tg.start_soon(self._heartbeat)
                try:
                    result = await body()
                except Exception as exc:  # noqa: BLE001 - re-raised below, outside the group
                    failure = exc
                tg.cancel_scope.cancel()
        finally:
            self._scope = None
            if not self.lost:
                with anyio.CancelScope(shield=True):
                    await self._release()
        if self.lost:
            raise RunLeaseLostError(self.run_id, self.holder)
        if failure is not None:
            raise failure
        if self._heartbeat_error is not None:
            raise self._heartbeat_error
        return result  # type: ignore[no-any-return]

    def fresh(self) -> bool:
        """True while this process holds the lease and its last heartbeat is not about to
        expire: :meth:`ensure` would then return at once (a clock read, no await).
        """
        lease = self.lease
        return (lease is not None and not self.lost
                and time.time() < lease.expires_at - self._margin)

    async def ensure(self) -> None:
        """Called before the run writes: make sure this process still holds the lease.

        Free while heartbeats are recorded on time (it compares the clock with the lease's
        expiry); only when the last heartbeat is about to expire -- the process was frozen or
        storage was unreachable -- does it renew the lease first. When the lease turns out to
        be lost, :attr:`lost` is set, the run is cancelled and the cancellation is delivered
        here (unless the caller is shielded: callers check :attr:`lost` after this).
        """
        lease = self.lease
        if lease is None or self.lost:
            return
        if time.time() < lease.expires_at - self._margin:
            return
        await self._renew()
        if self.lost:
            await anyio.lowlevel.checkpoint()

    async def _renew(self) -> None:
        lease = self.lease
        assert lease is not None
        now = time.time()
        try:
            kept = await self.storage.renew_lease(
                self.run_id, lease.owner, heartbeat_at=now,
                expires_at=now + self.settings.lease_timeout)
        except StorageError as exc:
            # the lease stays ours until it expires; the next heartbeat tells if we lost it
            log.warning("run %s: could not record a heartbeat (%s); trying again in %g s",
                        self.run_id, exc, self.settings.heartbeat_interval)
            return
        if kept:
            lease.heartbeat_at, lease.expires_at = now, now + self.settings.lease_timeout
            return
        if self.lost:
            return
        self.lost = True
        try:
            self.holder = (await self.storage.get_leases([self.run_id])).get(self.run_id)
        except StorageError as exc:
            log.warning("run %s: could not read who holds the run now: %s", self.run_id, exc)
        log.error("run %s: this process lost the run's lease; it stops executing the run",
                  self.run_id)
        if self._scope is not None:
            self._scope.cancel()

    async def _heartbeat(self) -> None:
        while not self.lost:
            await anyio.sleep(self.settings.heartbeat_interval)
            try:
                await self._renew()
            except Exception as exc:  # noqa: BLE001 - re-raised by hold(), outside the group
                log.error("run %s: renewing its lease failed: %r; stopping the run",
                          self.run_id, exc)
                self._heartbeat_error = exc
                if self._scope is not None:
                    self._scope.cancel()
                return

    async def _release(self) -> None:
        lease = self.lease
        if lease is None:
            return
        try:
            await self.storage.release_lease(self.run_id, lease.owner)
        except StorageError as exc:
            log.warning("run %s: could not release its lease (%s); it expires by itself %g s "
                        "after the last heartbeat", self.run_id, exc,
                        self.settings.lease_timeout)
