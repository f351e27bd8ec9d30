"""Schedules and their fire times.

A :class:`Schedule` names a workflow file and when to run it: a cron expression (5 fields,
or 6 with seconds last, as croniter reads them) evaluated in an IANA time zone, or a fixed
interval (``--every 10m``) counted from ``start_at``. Fire times are UNIX seconds (UTC).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from croniter import CroniterError, croniter
from flowyard import FlowyardError

__all__ = ["CATCH_UP_POLICIES", "Schedule", "ScheduleError", "fire_key", "fire_run_id",
           "parse_every", "check_name", "iso_utc", "MAX_INPUT_BYTES"]

#: What a scheduler does with fire times it missed (it was not running): ``skip`` them,
#: fire the latest ``once``, or fire ``all`` of them (at most ``max_catch_up``).
CATCH_UP_POLICIES = ("skip", "once", "all")

#: Largest JSON encoding of a schedule's inputs, in bytes.
MAX_INPUT_BYTES = 256 * 1024

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_EVERY = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?")
_MAX_COUNTED = 100_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ScheduleError(FlowyardError):
    """A schedule is invalid (the message names the field and the value) or unknown."""


def check_name(name: str) -> str:
    """Return ``name`` when it is a valid schedule name: 1-128 characters, letters, digits,
    ``.``, ``_`` and ``-``, starting with a letter or digit.

    Raises:
        ScheduleError: anything else (slashes, quotes, spaces, empty, too long).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ScheduleError(
            f"schedule name {name!r} is invalid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")
    return name


def parse_every(text: str) -> float:
    """Parse an interval: ``"90"`` or ``"90s"``, ``"10m"``, ``"2h"``, ``"1d"``, ``"1w"``.

    Returns:
        the interval in seconds (>= 1).

    Raises:
        ScheduleError: not of that form, or shorter than one second (names ``every``).
    """
    match = _EVERY.fullmatch(str(text).strip())
    if not match:
        raise ScheduleError(f"every: {text!r} is not an interval; use e.g. 30s, 10m, 2h, 1d, 1w")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds) or seconds < 1:
        raise ScheduleError(f"every: {text!r} is shorter than one second")
    return seconds


def iso_utc(ts: float) -> str:
    """Return UNIX seconds ``ts`` as ISO 8601 in UTC (``2026-12-02T16:40:00+00:00``)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def fire_key(name: str, scheduled_for: float) -> str:
    """The idempotency key of schedule ``name``'s fire at ``scheduled_for`` (UNIX seconds):
    ``schedule:<name>:<ISO time in UTC>``. Every scheduler computes the same key for the same
    fire, so the storage creates one run per fire however many schedulers race.
    """
    return f"schedule:{name}:{iso_utc(scheduled_for)}"


def fire_run_id(name: str, scheduled_for: float) -> str:
    """The run id of a fire: the first 32 hex digits of the SHA-256 of :func:`fire_key`."""
    return hashlib.sha256(fire_key(name, scheduled_for).encode()).hexdigest()[:32]


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"tz: {tz!r} is not an IANA time zone (e.g. UTC, "
                            "Europe/Berlin, America/New_York)") from exc


@attrs.define
class Schedule:
    """One schedule.

    Args:
        name: see :func:`check_name`.
        workflow: absolute path of the workflow file, read again at each fire.
        workflow_sha256: SHA-256 (hex) of the file when the schedule was added; a fire of a
            changed file is marked ``workflow_changed`` in the run's metadata.
        cron: a cron expression (exclusive with ``every_s``).
        every_s: an interval in seconds (>= 1), counted from ``start_at``.
        tz: IANA time zone the cron expression is read in (default ``UTC``).
        catch_up: one of :data:`CATCH_UP_POLICIES`.
        inputs: the workflow inputs (JSON-ready, at most :data:`MAX_INPUT_BYTES` encoded).
        start_at: UNIX seconds; no fire before it (and the interval's anchor).
        created_at: UNIX seconds.
        paused: a paused schedule fires nothing; its missed times are skipped on resume.
        max_catch_up: most missed fires ``catch_up="all"`` fires at once (>= 1).
        misfire_grace_s: seconds after its time within which a fire counts as on time,
            not as missed (> 0).

    Raises:
        ScheduleError: on construction, a field is invalid (the message names it).
    """

    name: str
    workflow: str
    workflow_sha256: str = ""
    cron: str | None = None
    every_s: float | None = None
    tz: str = "UTC"
    catch_up: str = "skip"
    inputs: dict[str, Any] = attrs.field(factory=dict)
    start_at: float = 0.0
    created_at: float = 0.0
    paused: bool = False
    max_catch_up: int = 100
    misfire_grace_s: float = 60.0

    def __attrs_post_init__(self) -> None:
        check_name(self.name)
        if (self.cron is None) == (self.every_s is None):
            raise ScheduleError(f"schedule {self.name!r}: give exactly one of cron and every")
        zone = _zone(self.tz)
        if self.cron is not None:
            try:
                croniter(self.cron, datetime.now(zone))
            except (CroniterError, ValueError, TypeError) as exc:
                raise ScheduleError(f"cron: {self.cron!r} is not a cron expression: {exc}"
                                    ) from exc
        elif (isinstance(self.every_s, bool) or not isinstance(self.every_s, (int, float))
              or not math.isfinite(self.every_s) or self.every_s < 1):
            raise ScheduleError(f"every: {self.every_s!r} must be a number of seconds >= 1")
        if self.catch_up not in CATCH_UP_POLICIES:
            raise ScheduleError(f"catch_up: {self.catch_up!r} must be one of "
                                f"{', '.join(CATCH_UP_POLICIES)}")
        if not isinstance(self.inputs, Mapping):
            raise ScheduleError(f"inputs: must be an object, got {type(self.inputs).__name__}")
        try:
            size = len(json.dumps(self.inputs, allow_nan=False).encode())
        except (TypeError, ValueError) as exc:
            raise ScheduleError(f"inputs: not JSON-ready: {exc}") from exc
        if size > MAX_INPUT_BYTES:
            raise ScheduleError(f"inputs: {size} bytes of JSON, more than the "
                                f"{MAX_INPUT_BYTES} allowed")
        if not isinstance(self.max_catch_up, int) or self.max_catch_up < 1:
            raise ScheduleError(f"max_catch_up: {self.max_catch_up!r} must be an integer >= 1")
        if not math.isfinite(self.misfire_grace_s) or self.misfire_grace_s <= 0:
            raise ScheduleError(f"misfire_grace_s: {self.misfire_grace_s!r} must be > 0")
        if not math.isfinite(self.start_at):
            raise ScheduleError(f"start_at: {self.start_at!r} is not a time")

    @property
    def when(self) -> str:
        """``cron '<expr>' (<tz>)`` or ``every <seconds>s``."""
        if self.cron is not None:
            return f"cron {self.cron!r} ({self.tz})"
        return f"every {self.every_s:g}s"

    def next_after(self, after: float) -> float:
        """Return the first fire time strictly after ``after`` and not before ``start_at``
        (UNIX seconds). Cron times are computed in :attr:`tz`: a time that a spring-forward
        DST change skips fires at the first valid moment after it (croniter's rule).
        """
        after = max(after, self.start_at - 1e-6)
        if self.every_s is not None:
            if after < self.start_at:
                return self.start_at
            steps = math.floor((after - self.start_at) / self.every_s) + 1
            return self.start_at + steps * self.every_s
        base = datetime.fromtimestamp(after, _zone(self.tz))
        nxt = croniter(self.cron, base).get_next(datetime)
        return float(nxt.timestamp())

    def times_between(self, after: float, until: float, *, limit: int) -> tuple[list[float], int]:
        """Return fire times ``t`` with ``after < t <= until`` (UNIX seconds, ascending).

        Returns:
            ``(times, more)``: the last ``limit`` times, and how many earlier ones were left
            out (for cron, counted up to 100000).
        """
        if self.every_s is not None:  # arithmetic: no loop over a long downtime
            first = self.next_after(after)
            if first > until:
                return [], 0
            count = math.floor((until - first) / self.every_s) + 1
            more = max(0, count - limit)
            return [first + i * self.every_s for i in range(more, count)], more
        times: list[float] = []
        more = 0
        t = self.next_after(after)
        while t <= until:
            times.append(t)
            if len(times) > limit:
                times.pop(0)
                more += 1
                if more >= _MAX_COUNTED:
                    break
            t = self.next_after(t)
        return times, more

    def to_json(self) -> dict[str, Any]:
        """The stored form (a JSON-ready dict)."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Schedule:
        """Rebuild a schedule from :meth:`to_json`.

        Raises:
            ScheduleError: the stored value is not a schedule.
        """
        if not isinstance(data, Mapping):
            raise ScheduleError(f"stored schedule is not an object: {data!r:.80}")
        fields = {f.name for f in attrs.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in fields})
        except TypeError as exc:
            raise ScheduleError(f"stored schedule is damaged: {exc}") from exc
