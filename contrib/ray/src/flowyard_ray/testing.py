"""A local multi-node Ray cluster for tests, started with the ``ray`` command line.

:class:`LocalCluster` runs ``ray start --head --block`` and one ``ray start --address ...
--block`` per extra node, each in its own process session on 127.0.0.1 with ports picked
free, waits until every node is registered, and stops exactly the processes it started
(each node's session, then any Ray process still naming the cluster's temporary folder).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["LocalCluster", "free_port"]


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ray_command() -> str:
    candidate = Path(sys.executable).with_name("ray")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if found is None:
        raise RuntimeError("the `ray` command is not installed next to this Python "
                           "(pip install flowyard-ray installs it with ray)")
    return found


class LocalCluster:
    """A Ray cluster of ``nodes`` nodes on this machine, each with ``num_cpus`` CPUs.

    Args:
        nodes: how many nodes (the head included), >= 1.
        num_cpus: CPUs each node offers to Ray.
        start_timeout_s: seconds a node may take to start.
        start_attempts: how often a node other than the head is started before giving up
            (``ray start`` exits when its raylet is slow to register on a loaded machine).
        env: extra environment of the ``ray start`` processes (and so of their workers).

    Attributes:
        address: ``"127.0.0.1:PORT"`` of the head's GCS, for ``[ray] address``.
        temp_dir: the cluster's temporary folder (sessions, logs, sockets).
    """

    def __init__(self, nodes: int = 2, *, num_cpus: int = 1, start_timeout_s: float = 180.0,
                 start_attempts: int = 3, env: dict[str, str] | None = None) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, got {nodes}")
        self.nodes = nodes
        self.num_cpus = num_cpus
        self.start_timeout_s = start_timeout_s
        self.start_attempts = start_attempts
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
        self.temp_dir = tempfile.mkdtemp(prefix="fyray")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []
        self.node_manager_ports: list[int] = []

    # ------------------------------------------------------------------ start and stop

    def _node_args(self, index: int) -> list[str]:
        node_port, object_port = free_port(), free_port()
        self.node_manager_ports.append(node_port)
        args = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.num_cpus),
                "--disable-usage-stats", "--node-manager-port", str(node_port),
                "--object-manager-port", str(object_port),
                "--metrics-export-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port())]
        if index == 0:
            # no --ray-client-server-port: it needs ray[client], which the tests do not use
            args = ["--head", "--port", str(self.port), "--include-dashboard=false",
                    "--temp-dir", self.temp_dir, *args]
        else:
            args = ["--address", self.address, *args]
        return args

    def _start_node(self, index: int) -> None:
        del self.node_manager_ports[index:]
        log_path = Path(self.temp_dir) / f"node{index}.log"
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen([_ray_command(), "start", *self._node_args(index)],
                                    stdout=log_file, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        if index < len(self._procs):
            self._procs[index], self._logs[index] = proc, log_path
        else:
            self._procs.append(proc)
            self._logs.append(log_path)
        deadline = time.monotonic() + self.start_timeout_s
        while b"Ray runtime started" not in log_path.read_bytes():
            if proc.poll() is not None:
                raise RuntimeError(f"ray start of node {index} exited with {proc.returncode}:"
                                   f"\n{log_path.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {index} did not start in {self.start_timeout_s} s:"
                                   f"\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def start(self) -> LocalCluster:
        """Start the head, then the other nodes; return self once all are started.

        Raises:
            RuntimeError: a node did not start in time (its log's end in the message).
        """
        try:
            for index in range(self.nodes):
                for attempt in range(1, self.start_attempts + 1):
                    try:
                        self._start_node(index)
                        break
                    except RuntimeError:
                        # `ray start` gives a raylet 30 s to register with the GCS; on a
                        # loaded machine it may miss that: start the node again
                        if attempt == self.start_attempts or index == 0:
                            raise
        except BaseException:
            self.stop()
            raise
        return self

    def wait_nodes(self, alive: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Wait until ``ray.nodes()`` (this process must be connected) shows ``alive``
        alive nodes; return them.

        Raises:
            TimeoutError: not within ``timeout_s`` seconds.
        """
        import ray  # lazy: the module is importable without connecting

        deadline = time.monotonic() + timeout_s
        while True:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            if len(nodes) == alive:
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(nodes)} alive Ray nodes after {timeout_s} s, "
                                   f"expected {alive}")
            time.sleep(0.1)

    def node_index(self, node_id: str) -> int:
        """Return the index (0: head) of the node with Ray id ``node_id``.

        Raises:
            KeyError: no node of this cluster has that id.
        """
        import ray  # lazy: see wait_nodes

        for node in ray.nodes():
            if node["NodeID"] == node_id and node["NodeManagerPort"] in self.node_manager_ports:
                return self.node_manager_ports.index(node["NodeManagerPort"])
        raise KeyError(f"no node {node_id!r} in this cluster")

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index`` (its raylet and the processes of its session), as if its
        machine died. Its workers, each in a session of its own, exit when their raylet is
        gone (:meth:`kill_node` does not wait for that).
        """
        proc = self._procs[index]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def _leftovers(self) -> list[int]:
        """Pids of processes whose command line names this cluster's temporary folder."""
        pids = []
        marker = self.temp_dir.encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def stop(self) -> None:
        """Stop every node (SIGTERM to each node's session, SIGKILL after 5 s), then
        SIGKILL what is left of this cluster's processes after 5 s, and remove the
        temporary folder.
        """
        for proc in reversed(self._procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 5
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        deadline = time.monotonic() + 5
        while self._leftovers() and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in self._leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
