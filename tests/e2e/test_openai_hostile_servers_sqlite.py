"""flowyard-openai through a real stack against misbehaving servers on 127.0.0.1 (issue 15).

* ``Retry-After: 2`` then success: the step's retry waits out the model pause and succeeds;
  ``Retry-After: 86400``: the run fails at once (not retried, the delay in the error, the
  model not paused);
* a server echoing the API key (200 HTML page, a JSON field of a body without choices, an
  error body, a stream error event): the key is in no event and nowhere in the SQLite
  database file after ``stack.run`` (its bytes are searched, WAL included).

A cross-distribution test (flowyard-openai with flowyard-sql's SQLite storage), so it lives in
tests/ and runs where every distribution is installed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flowyard.models import Event
from flowyard.stack import Stack

pytestmark = pytest.mark.anyio

CANARY = "sk-canary-0b7e4d29c6a84f1e93d5"

#: ``answer(n, body) -> (status, content type, headers, body)`` for the n-th request.
Answer = Callable[[int, dict[str, Any]], tuple[int, str, dict[str, str], str]]

COMPLETION = json.dumps({
    "id": "c1", "object": "chat.completion", "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})


class Server:
    """A scripted OpenAI-compatible server on a free 127.0.0.1 port."""

    def __init__(self, answer: Answer) -> None:
        self.calls: list[float] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.calls.append(time.monotonic())
                status, ctype, headers, text = answer(len(outer.calls), body)
                raw = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(raw)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], Server]]:
    servers: list[Server] = []

    def start(answer: Answer) -> Server:
        servers.append(Server(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def make_stack(server: Server, db: Path, monkeypatch: pytest.MonkeyPatch,
               **limits: Any) -> Stack:
    monkeypatch.setenv("FLOWYARD_PLUGINS", "builtin,openai,sql")
    monkeypatch.setenv("FLOWYARD_STRICT_PLUGINS", "1")
    config: dict[str, Any] = {
        "storage": {"url": f"sqlite:///{db}"},
        "openai": {"endpoints": {"hostile": {"base_url": server.base_url, "api_key": CANARY,
                                             "free": True, "timeout": 5}}},
    }
    if limits:
        config["limits"] = limits
    return Stack(discover=True, config=config)


def workflow(attempts: int = 3) -> dict[str, Any]:
    with_: dict[str, Any] = {"prompt": "hello", "model": "hostile/m"}
    return {"name": "hostile", "steps": [
        {"id": "ask", "uses": "llm.chat", "with": with_,
         "retry": {"attempts": attempts, "backoff": 0.05, "jitter": 0}}],
        "outputs": {"answer": "${ask}"}}


async def run(stack: Stack) -> tuple[Any, list[Event], float]:
    events: list[Event] = []
    async with stack:
        stack.events.subscribe(events.append, name="test")
        started = time.monotonic()
        result = await stack.run(stack.load_workflow(workflow()), {})
        return result, events, time.monotonic() - started


def db_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


async def test_retry_after_2_then_success_waits_the_pause(serve: Any, tmp_path: Path,
                                                          flowyard_home: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    def answer(n: int, body: dict[str, Any]) -> tuple[int, str, dict[str, str], str]:
        if n == 1:
            return 429, "application/json", {"Retry-After": "2"}, '{"error": "busy"}'
        return 200, "application/json", {}, COMPLETION

    server = serve(answer)
    result, events, elapsed = await run(make_stack(server, tmp_path / "runs.db", monkeypatch))
    assert result.status == "completed", result.error
    assert len(server.calls) == 2
    assert server.calls[1] - server.calls[0] >= 1.9  # the model was paused 2 s
    assert elapsed < 8
    assert any(e.type == "ratelimit.paused" and e.data["seconds"] == 2 for e in events)


async def test_retry_after_of_a_day_fails_the_run_at_once(serve: Any, tmp_path: Path,
                                                          flowyard_home: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    server = serve(lambda n, body: (429, "application/json", {"Retry-After": "86400"},
                                    '{"error": {"message": "slow down"}}'))
    result, events, elapsed = await run(make_stack(server, tmp_path / "runs.db", monkeypatch))
    assert result.status == "failed"
    assert elapsed < 3
    assert len(server.calls) == 1  # not retried
    assert "86400 s" in (result.error or "")
    assert not any(e.type == "ratelimit.paused" for e in events)


async def test_the_gateway_cap_is_limits_max_retry_after(serve: Any, tmp_path: Path,
                                                         flowyard_home: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    server = serve(lambda n, body: (429, "application/json", {"Retry-After": "2"},
                                    '{"error": "busy"}'))
    stack = make_stack(server, tmp_path / "runs.db", monkeypatch, max_retry_after=1)
    result, events, elapsed = await run(stack)
    assert result.status == "failed" and len(server.calls) == 1 and elapsed < 3
    assert "more than the 1 s allowed by limits.max_retry_after" in (result.error or "")


ECHOES = {
    "html-200": (200, "text/html", f"<html><p>Invalid key {CANARY}</p></html>"),
    "json-field-200": (200, "application/json",
                       json.dumps({"object": "error page", "your_key": CANARY,
                                   "detail": f"key {CANARY} refused"})),
    "json-escaped-200": (200, "application/json",
                         '{"detail": "' + "".join(f"\\u{ord(c):04x}" for c in CANARY) + '"}'),
    "error-body-401": (401, "application/json",
                       json.dumps({"error": {"message": f"bad key {CANARY}", "type": CANARY}})),
    "sse-error-event": (200, "text/event-stream",
                        f'data: {{"error": {{"message": "key {CANARY}"}}}}\n\n'),
}


@pytest.mark.parametrize("name", sorted(ECHOES))
async def test_an_echoed_key_reaches_no_event_and_not_the_database(
        name: str, serve: Any, tmp_path: Path, flowyard_home: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    status, ctype, text = ECHOES[name]
    server = serve(lambda n, body: (status, ctype, {}, text))
    db = tmp_path / "runs.db"
    result, events, _ = await run(make_stack(server, db, monkeypatch))
    assert result.status == "failed"
    assert server.calls  # the server was asked (and echoed)
    assert any(e.type == "llm.error" for e in events)
    assert CANARY not in (result.error or "")
    for event in events:
        assert CANARY not in json.dumps(event.data, default=str), event
    data = db_bytes(db)
    assert b"***" in data  # the redacted error was stored: the search is not vacuous
    assert CANARY.encode() not in data
    assert CANARY[:12].encode() not in data
