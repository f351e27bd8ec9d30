"""Shared limits across real processes (issue 24): four OS processes, each with its own
Stack on one shared backend (``[limits] shared = "storage"``), call one OpenAI-compatible
server on 127.0.0.1 through flowyard-openai:

* 4 processes x 50 concurrent calls against ``[budgets.global] usd = 1.0`` never get more
  than $1.00 of calls admitted (counted by the server), and the rest are refused with
  BudgetExceeded;
* 4 processes x 50 concurrent calls under ``rps = 5, rpm = 30`` (``smooth = false``): the
  server sees exactly 30 calls, never more than 5 in any 1 s window nor 15 in any 3 s
  (less :data:`ALLOWANCE_S` for the time between admission and arrival; without sharing,
  the four processes would send 20 at once);
* a breaker opened by the failures one process sees makes another fail fast with
  CircuitOpenError, without a request reaching the server;
* a process killed (SIGKILL) in the middle of a call loses its concurrency slot and its
  budget reservation to ``[limits] hold_s``: then the slot is free and the reservation is
  counted as spent.

Each runs on PostgreSQL, a SQLite file and Redis (flowyard-sql, flowyard-redis: a
cross-distribution test, so it lives in tests/e2e). Workers are
``shared_limits_worker.py``; they start together when the test writes the ``go`` file.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from flowyard.stack import Stack

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORKER = HERE / "shared_limits_worker.py"
PROCESSES = 4
CALLS = 50
#: the price of srv/m: $200 per million output tokens; the server answers 100 output tokens
#: and the calls ask max_tokens = 100: every call reserves and costs $0.02 (no input price)
COST = 0.02
#: seconds allowed between a call's admission (the backend's log, which the limit is exact
#: on) and its arrival at the server: the commit (an fsync on SQLite) and the HTTP request,
#: in processes sharing 2 busy cores
ALLOWANCE_S = 0.4


class Server:
    """An OpenAI-compatible server on a free 127.0.0.1 port: ``m`` answers 100 output
    tokens after 10 ms, ``fail`` answers HTTP 500, ``slow`` answers only when the server
    closes; the arrival time (``time.monotonic()``) and model of every chat request are kept.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [
                    {"id": "m", "object": "model"}, {"id": "fail", "object": "model"}]})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                model = str(body.get("model"))
                with outer._lock:
                    outer.calls.append((time.monotonic(), model))
                if model == "fail":
                    self._send(500, {"error": {"message": "upstream down", "type": "server"}})
                    return
                if model == "slow":
                    outer._closing.wait(120)
                time.sleep(0.01)
                self._send(200, {
                    "id": "c", "object": "chat.completion", "model": model,
                    "choices": [{"index": 0, "finish_reason": "length",
                                 "message": {"role": "assistant", "content": "word " * 100}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 100,
                              "total_tokens": 103}})

            def log_message(self, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def times(self, model: str) -> list[float]:
        with self._lock:
            return sorted(t for t, m in self.calls if m == model)

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Any]:
    from flowyard_redis.testing import RedisServer

    server = RedisServer(appendonly=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


_REDIS_DB = itertools.count(1)


@pytest.fixture(params=["postgresql", "sqlite", "redis"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh shared backend: a new PostgreSQL database, SQLite file or Redis database."""
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        return str(server.url(server.create_database()))
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return f"redis://127.0.0.1:{server.port}/{next(_REDIS_DB)}"
    return f"sqlite:///{tmp_path / 'shared.db'}"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


def _config(url: str, server: Server, **tables: Any) -> dict[str, Any]:
    return {
        "storage": {"url": url},
        "openai": {"endpoints": {"srv": {"base_url": server.base_url, "api_key": "k",
                                         "timeout": 30}}},
        "models": {"info": {ref: {"input_per_mtok": 0.0, "output_per_mtok": 200.0,
                                  "max_output_tokens": 1000, "context_window": 8000}
                            for ref in ("srv/m", "srv/slow")}},
        **tables,
    }


def _env(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"FLOWYARD_PLUGINS": "builtin,openai,sql,redis",
                "FLOWYARD_STRICT_PLUGINS": "1", "FLOWYARD_DATA_DIR": str(folder / "data"),
                "XDG_CONFIG_HOME": str(folder / "config")})
    return env


def _run_workers(folder: Path, config: dict[str, Any], modes: list[str], *,
                 calls: int = CALLS, timeout: float = 180.0) -> list[dict[str, Any]]:
    """Start one worker per mode, release them together with the ``go`` file, and return
    their results (in order). Fails with a worker's stderr when it fails.
    """
    folder.mkdir(parents=True, exist_ok=True)
    env = _env(folder)
    procs = []
    for index, mode in enumerate(modes):
        settings = folder / f"settings-{index}.json"
        settings.write_text(json.dumps({"config": config, "mode": mode, "calls": calls,
                                        "folder": str(folder), "index": index}))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(settings)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        deadline = time.monotonic() + 120
        while not all((folder / f"ready-{i}").exists() for i in range(len(modes))):
            for proc in procs:
                if proc.poll() is not None:
                    raise AssertionError(f"a worker exited early: {proc.stderr.read().decode()}")
            assert time.monotonic() < deadline, "the workers did not get ready in time"
            time.sleep(0.02)
        (folder / "go").write_text("go")
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err.decode()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [json.loads((folder / f"result-{i}.json").read_text()) for i in range(len(modes))]


def _prepare(config: dict[str, Any]) -> None:
    """Create the backend's schema once (the workers would otherwise race to migrate)."""

    async def main() -> None:
        async with Stack(discover=True, config=config) as stack:
            assert await stack.llm.shared_limits() is not None

    anyio.run(main)


async def _budget_state(config: dict[str, Any], key: str) -> dict[str, float]:
    async with Stack(discover=True, config=config) as stack:
        shared = await stack.llm.shared_limits()
        assert shared is not None
        return await shared.backend.shared_budget_state(key)  # type: ignore[no-any-return]


def test_four_processes_never_admit_more_than_one_dollar(
        storage_url: str, server: Server, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _env(tmp_path).items():
        monkeypatch.setenv(name, value)
    config = _config(storage_url, server, limits={"shared": "storage"},
                     budgets={"global": {"usd": 1.0}})
    _prepare(config)
    results = _run_workers(tmp_path / "budget", config, ["calls"] * PROCESSES)
    assert all(not r["other"] for r in results), results
    admitted = sum(r["ok"] for r in results)
    refused = sum(r["budget"] for r in results)
    served = server.times("m")
    assert admitted + refused == PROCESSES * CALLS
    assert len(served) == admitted  # the server saw exactly the admitted calls
    assert len(served) * COST <= 1.0 + 1e-9, f"{len(served)} calls of ${COST} admitted"
    assert sum(r["cost_usd"] for r in results) <= 1.0 + 1e-9
    assert admitted >= 45 and refused > 0  # the budget was used, not refused wholesale
    state = anyio.run(_budget_state, config, "budget:global:total")
    assert state["reserved_usd"] == 0.0
    assert abs(state["spent_usd"] - admitted * COST) < 1e-9


def test_four_processes_never_exceed_one_rate_limit(
        storage_url: str, server: Server, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _env(tmp_path).items():
        monkeypatch.setenv(name, value)
    rps, rpm = 5, 30
    config = _config(storage_url, server, limits={
        "shared": "storage", "max_wait_s": 20,
        "srv/m": {"rps": rps, "rpm": rpm, "smooth": False}})
    _prepare(config)
    results = _run_workers(tmp_path / "rate", config, ["calls"] * PROCESSES)
    assert all(not r["other"] for r in results), results
    admitted = sum(r["ok"] for r in results)
    served = server.times("m")
    assert len(served) == admitted
    assert admitted == rpm  # the minute's calls, no more (the rest: RateLimitedError)
    assert sum(r["rate"] for r in results) == PROCESSES * CALLS - rpm
    # never more than rps calls in any 1 s window (n * rps in n s), less ALLOWANCE_S
    for seconds in (1, 3):
        span = seconds - ALLOWANCE_S
        worst = max(sum(1 for t in served[i:] if t < start + span)
                    for i, start in enumerate(served))
        assert worst <= seconds * rps, f"{worst} calls within {span:g} s: {served}"
    assert served[-1] - served[0] >= (rpm / rps - 1) - ALLOWANCE_S  # spread over ~5 s


def test_a_breaker_opened_by_one_process_is_open_for_another(
        storage_url: str, server: Server, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _env(tmp_path).items():
        monkeypatch.setenv(name, value)
    config = _config(storage_url, server, limits={"shared": "storage"},
                     circuit={"failure_threshold": 3, "cooldown_s": 120})
    _prepare(config)
    [opened] = _run_workers(tmp_path / "open", config, ["open-breaker"])
    assert opened == {"failures": 3, "opened": True}
    [checked] = _run_workers(tmp_path / "check", config, ["breaker-check"])
    assert checked["circuit_open"], checked
    assert "'srv' is open" in checked["error"]
    assert server.times("m") == []  # the second process sent nothing
    assert len(server.times("fail")) == 3


def test_a_killed_process_loses_its_slot_and_reservation_to_hold_s(
        storage_url: str, server: Server, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _env(tmp_path).items():
        monkeypatch.setenv(name, value)
    hold_s = 2.0
    config = _config(storage_url, server, budgets={"global": {"usd": 1.0}}, limits={
        "shared": "storage", "hold_s": hold_s, "max_wait_s": 30, "srv": {"concurrency": 1}})
    _prepare(config)
    folder = tmp_path / "hang"
    folder.mkdir()
    settings = folder / "settings-0.json"
    settings.write_text(json.dumps({"config": config, "mode": "hang", "calls": 1,
                                    "folder": str(folder), "index": 0}))
    (folder / "go").write_text("go")
    proc = subprocess.Popen([sys.executable, str(WORKER), str(settings)], env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not server.times("slow"):  # the call is admitted and in flight
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the worker's call never arrived"
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        killed_at = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    async def after_the_kill() -> tuple[dict[str, float], float, dict[str, float]]:
        async with Stack(discover=True, config=config) as stack:
            shared = await stack.llm.shared_limits()
            assert shared is not None
            held = await shared.backend.shared_budget_state("budget:global:total")
            # the dead process still holds srv's only slot: this call waits for hold_s
            await stack.llm.chat("hi", model="srv/m", max_tokens=100)
            admitted_at = time.monotonic()
            after = await shared.backend.shared_budget_state("budget:global:total")
            return held, admitted_at, after

    held, admitted_at, after = anyio.run(after_the_kill)
    assert abs(held["reserved_usd"] - COST) < 1e-9  # the dead call's reservation
    # the slot was freed by hold_s, not by the kill
    assert admitted_at - server.times("slow")[0] >= hold_s - ALLOWANCE_S
    assert admitted_at - killed_at < 60  # (max_wait_s is 30)
    assert after["reserved_usd"] == 0.0
    assert abs(after["spent_usd"] - 2 * COST) < 1e-9  # the dead reservation counts as spent
