"""A throwaway ``redis-server`` for tests: :class:`RedisServer`.

Starts Debian's ``/usr/bin/redis-server`` (installed by ``scripts/system-deps.sh``) on a free
port of 127.0.0.1 with its own temporary directory, the append-only file on
(``appendonly yes``, ``appendfsync always`` unless told otherwise) and RDB snapshots off, so a
test can SIGKILL it (:meth:`RedisServer.kill`) and start it again on the same data directory
(:meth:`RedisServer.restart`) to check what survives a crash::

    server = RedisServer()
    server.start()
    try:
        url = server.url           # redis://127.0.0.1:<port>/0
        ...
    finally:
        server.stop()

Readiness is checked by sending ``PING`` over a plain socket until ``+PONG`` comes back or the
deadline passes; no fixed sleeps.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "RedisServerError", "find_redis_server"]

_INSTALL_HINT = "run scripts/system-deps.sh, it installs redis-server (the Debian package)"


class RedisServerError(RuntimeError):
    """redis-server is missing, did not start, or did not answer PING in time."""


def find_redis_server() -> str:
    """Return the path of the ``redis-server`` executable.

    Looks at ``$FLOWYARD_REDIS_SERVER``, then ``/usr/bin/redis-server``, then ``PATH``.

    Raises:
        RedisServerError: no redis-server was found (the message says which script
            installs it).
    """
    override = os.environ.get("FLOWYARD_REDIS_SERVER")
    if override:
        if not os.access(override, os.X_OK):
            raise RedisServerError(
                f"FLOWYARD_REDIS_SERVER={override!r} is not an executable file")
        return override
    for candidate in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RedisServerError(f"redis-server is not installed: {_INSTALL_HINT}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int, timeout: float) -> bool:
    """True when a Redis server on 127.0.0.1:``port`` answers PING with PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A throwaway Redis server on 127.0.0.1 for tests (not for production).

    Args:
        appendfsync: the AOF fsync policy: ``"always"`` (every write is on disk before it is
            acknowledged: what the crash tests need), ``"everysec"`` or ``"no"``.
        appendonly: keep the append-only file (``True``); ``False`` runs Redis with no
            persistence at all.
        port: the TCP port (None: a free one is chosen).
        data_dir: the directory of the AOF (None: a new temporary directory, removed by
            :meth:`stop`; a given directory is kept).
        maxmemory_policy: Redis's ``maxmemory-policy`` (flowyard's storage refuses anything
            but ``noeviction``; tests of that refusal set another one).
        start_timeout: seconds to wait for ``PING`` to be answered.
        extra_config: more ``redis.conf`` lines.

    Attributes:
        port: the TCP port; url: ``redis://127.0.0.1:<port>/0``; data_dir: the data
            directory (a :class:`pathlib.Path`); log_path: redis-server's log file.

    Raises:
        RedisServerError: redis-server is not installed (from the constructor), or an
            invalid ``appendfsync``.
    """

    def __init__(self, *, appendfsync: str = "always", appendonly: bool = True,
                 port: int | None = None, data_dir: str | Path | None = None,
                 maxmemory_policy: str = "noeviction", start_timeout: float = 30.0,
                 extra_config: list[str] | None = None) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise RedisServerError(
                f"appendfsync must be 'always', 'everysec' or 'no', got {appendfsync!r}")
        self.executable = find_redis_server()
        self.appendfsync = appendfsync
        self.appendonly = appendonly
        self.port = port or _free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(
            tempfile.mkdtemp(prefix="flowyard-redis-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.maxmemory_policy = maxmemory_policy
        self.start_timeout = start_timeout
        self.extra_config = list(extra_config or [])
        self.log_path = self.data_dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL, ``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The redis-server process id while it runs, else None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _write_config(self) -> Path:
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f"dir {self.data_dir}",
            f"logfile {self.log_path}",
            "daemonize no",
            "protected-mode yes",
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            f"appendfsync {self.appendfsync}",
            "appendfilename appendonly.aof",
            f"maxmemory-policy {self.maxmemory_policy}",
            *self.extra_config,
        ]
        path = self.data_dir / "redis.conf"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def start(self) -> RedisServer:
        """Start redis-server and wait until it answers PING.

        Returns:
            self.

        Raises:
            RedisServerError: it is running already, exited at start (the message carries
                the end of its log), or did not answer within ``start_timeout`` seconds.
        """
        if self.pid is not None:
            raise RedisServerError(f"redis-server on port {self.port} is running already")
        config = self._write_config()
        self._proc = subprocess.Popen([self.executable, str(config)], cwd=self.data_dir,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RedisServerError(
                    f"redis-server exited with status {self._proc.returncode} at start "
                    f"(port {self.port}): {err.strip()} {self._log_tail()}")
            if _ping(self.port, timeout=1.0):
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise RedisServerError(
                    f"redis-server did not answer PING on 127.0.0.1:{self.port} within "
                    f"{self.start_timeout} s: {self._log_tail()}")
            time.sleep(0.02)  # polling interval of the readiness check

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "log: " + " | ".join(text.strip().splitlines()[-lines:])

    def _wait(self, timeout: float) -> None:
        if self._proc is None:
            return
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=timeout)
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL redis-server (a crash: nothing is flushed) and wait for it to exit.
        The data directory is kept. No error when it is not running.
        """
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
        self._wait(timeout=30.0)

    def shutdown(self) -> None:
        """Stop redis-server with SIGTERM (a clean shutdown) and wait for it; the data
        directory is kept. No error when it is not running.
        """
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        self._wait(timeout=30.0)

    def restart(self) -> RedisServer:
        """Start redis-server again on the same port and data directory (after
        :meth:`kill` or :meth:`shutdown`; a running server is killed first). Redis loads
        its append-only file before it answers PING.

        Returns:
            self.

        Raises:
            RedisServerError: as :meth:`start`.
        """
        self.kill()
        return self.start()

    def stop(self) -> None:
        """Kill redis-server and remove the data directory if this object created it."""
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
