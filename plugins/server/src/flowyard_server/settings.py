"""Settings of ``flowyard serve`` and ``flowyard worker``: table ``[server]`` of ``flowyard.toml``
(or ``FLOWYARD_SERVER__KEY`` in the environment); command-line options override them.

=========================  =========================================================  ========
key                        meaning                                                    default
=========================  =========================================================  ========
``host``                   address to bind (anything but loopback needs an API key)   127.0.0.1
``port``                   TCP port                                                   8750
``worker``                 run a worker inside ``flowyard serve``                     true
``concurrency``            tasks one worker runs at once                              4
``task_lease_timeout``     seconds a claimed task stays leased without a heartbeat    30
``task_renew_interval``    seconds between two lease renewals (< lease timeout)       5
``poll_interval``          seconds an idle worker waits before looking for tasks      1.0
``max_body_bytes``         largest request body (413 beyond)                          1 MiB
``max_json_depth``         deepest nesting of a JSON body (422 beyond)                32
``sse_ping``               seconds between two SSE heartbeat comments                 15
``sse_poll``               seconds between two reads of a run's event log (SSE)       0.25
``stream_deltas``          deliver ``step.delta`` token deltas over SSE; workers      true
                           relay them through the storage to every server process
``ui``                     serve the web dashboard under ``/ui``                      true
``relay_interval``         seconds between two writes of a run's relayed deltas       0.25
``workflows_dir``          directory that relative ``uses: workflow`` paths of        cwd
                           registered workflows are resolved against (stored with
                           the registration, so every worker resolves them alike)
``human_expiry_interval``  seconds between two looks of a worker for human steps       30
                           whose ``timeout_s`` passed (they take their default and
                           their runs resume; 0: never)
``key_cache_seconds``      seconds a verified API key is trusted without re-reading   2
                           the storage (a revocation by another process takes effect
                           within this time; 0: read on every request)
=========================  =========================================================  ========
"""

from __future__ import annotations

from typing import Any

import attrs
from flowyard import Config, ConfigError

__all__ = ["ServerSettings", "LOOPBACK_HOSTS"]

#: Host names and addresses that bind only the loopback interface.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _number(table: dict[str, Any], key: str, default: float, *, integer: bool = False,
            minimum: float = 0.0) -> Any:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= minimum:
        raise ConfigError(f"[server] {key} must be a number > {minimum:g}, got {value!r}")
    if integer:
        if int(value) != value:
            raise ConfigError(f"[server] {key} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _seconds_or_zero(table: dict[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"[server] {key} must be a number >= 0, got {value!r}")
    return float(value)


@attrs.frozen
class ServerSettings:
    """The settings of one server or worker process (times in seconds, sizes in bytes).

    Build it with :meth:`from_config`; :func:`attrs.evolve` applies command-line overrides.

    Raises:
        ConfigError: on construction, when ``task_renew_interval`` is not below
            ``task_lease_timeout``.
    """

    host: str = "127.0.0.1"
    port: int = 8750
    worker: bool = True
    concurrency: int = 4
    task_lease_timeout: float = 30.0
    task_renew_interval: float = 5.0
    poll_interval: float = 1.0
    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    sse_ping: float = 15.0
    sse_poll: float = 0.25
    stream_deltas: bool = True
    ui: bool = True
    relay_interval: float = 0.25
    key_cache_seconds: float = 2.0
    workflows_dir: str = ""
    human_expiry_interval: float = 30.0

    def __attrs_post_init__(self) -> None:
        if self.task_renew_interval >= self.task_lease_timeout:
            raise ConfigError(
                f"[server] task_renew_interval ({self.task_renew_interval:g} s) must be "
                f"shorter than task_lease_timeout ({self.task_lease_timeout:g} s)")

    @classmethod
    def from_config(cls, config: Config) -> ServerSettings:
        """Read table ``[server]`` of ``config``.

        Raises:
            ConfigError: a value has the wrong type or is out of range.
        """
        table = config.section("server")
        unknown = set(table) - set(attrs.fields_dict(cls))
        if unknown:
            raise ConfigError(f"[server] has unknown keys: {', '.join(sorted(unknown))}")
        host = table.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            raise ConfigError(f"[server] host must be a host name or address, got {host!r}")
        flags = {}
        for key in ("worker", "stream_deltas", "ui"):
            value = table.get(key, True)
            if not isinstance(value, bool):
                raise ConfigError(f"[server] {key} must be true or false, got {value!r}")
            flags[key] = value
        workflows_dir = table.get("workflows_dir", "")
        if not isinstance(workflows_dir, str):
            raise ConfigError(f"[server] workflows_dir must be a directory path, got "
                              f"{workflows_dir!r}")
        port = _number(table, "port", 8750, integer=True)
        if port > 65535:
            raise ConfigError(f"[server] port must be at most 65535, got {port}")
        return cls(
            host=host, port=port, **flags, workflows_dir=workflows_dir,
            concurrency=_number(table, "concurrency", 4, integer=True),
            task_lease_timeout=_number(table, "task_lease_timeout", 30.0),
            task_renew_interval=_number(table, "task_renew_interval", 5.0),
            poll_interval=_number(table, "poll_interval", 1.0),
            max_body_bytes=_number(table, "max_body_bytes", 1024 * 1024, integer=True),
            max_json_depth=_number(table, "max_json_depth", 32, integer=True),
            sse_ping=_number(table, "sse_ping", 15.0),
            sse_poll=_number(table, "sse_poll", 0.25),
            relay_interval=_number(table, "relay_interval", 0.25),
            key_cache_seconds=_seconds_or_zero(table, "key_cache_seconds", 2.0),
            human_expiry_interval=_seconds_or_zero(table, "human_expiry_interval", 30.0),
        )

    @property
    def loopback(self) -> bool:
        """True when :attr:`host` binds the loopback interface only."""
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")
