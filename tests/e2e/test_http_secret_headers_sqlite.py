"""Secrets outside ``api_key`` through the real CLI and SQLite storage (issue 16, item 1).

An OpenAI-compatible gateway on 127.0.0.1 takes its key as a header (``headers = {
X-Gateway-Key = "..." }``) and in the base URL's query (``base_url = ".../v1?key=..."``). It
records every request line and header and echoes them back in its answers (a 401, a 500 and
a 200 completion whose text quotes them). The test checks that the key arrives where it
belongs (the query after ``/v1/chat/completions``, the header) and that neither canary
appears anywhere else: ``flowyard run --json`` output, ``flowyard runs show`` (plain and
``--json``), ``flowyard doctor --json``, the events of a run, and the bytes of the SQLite
database (WAL included).

A cross-distribution test (flowyard-openai with flowyard-sql's SQLite storage), so it lives in
tests/ and runs where every distribution is installed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from flowyard.cli import cli
from flowyard.models import Event
from flowyard.stack import Stack

HEADER_CANARY = "hdr-canary-2c7d90e4a1b35f68"
QUERY_CANARY = "qry-canary-8e1f03b5c7d94a26"
CANARIES = (HEADER_CANARY, QUERY_CANARY)

WORKFLOW = """\
name: gateway
steps:
  - id: ask
    uses: llm.chat
    with: {prompt: "hello", model: gw/m}
outputs:
  answer: "${ask}"
"""

#: ``answer(echo) -> (status, body)``; ``echo`` is what the server received, as text.
Answer = Callable[[str], tuple[int, str]]


class Gateway:
    """An OpenAI-compatible server on a free 127.0.0.1 port that records and echoes requests."""

    def __init__(self, answer: Answer) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append((self.requestline, headers))
                echo = f"{self.requestline} {headers}".replace('"', "'")
                status, text = answer(echo)
                raw = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _serve

            def log_message(self, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{port}/v1?key={QUERY_CANARY}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def error_answer(status: int) -> Answer:
    return lambda echo: (status, json.dumps({"error": {"message": f"refused: {echo}",
                                                       "type": "invalid_request_error"}}))


def completion_answer(echo: str) -> tuple[int, str]:
    if echo.startswith("GET "):
        return 200, json.dumps({"object": "list", "data": [{"id": "m", "note": echo}]})
    return 200, json.dumps({
        "id": "c1", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"saw {echo}"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})


@pytest.fixture
def gateway() -> Iterator[Callable[[Answer], Gateway]]:
    servers: list[Gateway] = []

    def start(answer: Answer) -> Gateway:
        servers.append(Gateway(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def setup_project(tmp_path: Path, server: Gateway, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write flowyard.toml and the workflow into ``tmp_path``; return the database path."""
    db = tmp_path / "runs.db"
    (tmp_path / "flowyard.toml").write_text(
        f'[storage]\nurl = "sqlite:///{db}"\n\n'
        f'[openai.endpoints.gw]\nbase_url = "{server.base_url}"\nfree = true\ntimeout = 5\n'
        f'headers = {{ X-Gateway-Key = "{HEADER_CANARY}", User-Agent = "flowyard-e2e" }}\n',
        encoding="utf-8")
    (tmp_path / "wf.yaml").write_text(WORKFLOW, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLOWYARD_CONFIG", str(tmp_path / "flowyard.toml"))
    monkeypatch.setenv("FLOWYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FLOWYARD_STORAGE_URL", raising=False)
    monkeypatch.setenv("FLOWYARD_PLUGINS", "builtin,openai,sql")
    monkeypatch.setenv("FLOWYARD_STRICT_PLUGINS", "1")
    return db


def assert_clean(what: str, text: str | bytes) -> None:
    """Neither canary, nor a 12-character piece or the percent-encoded form of one."""
    data = text.encode() if isinstance(text, str) else text
    for canary in CANARIES:
        for form in (canary, canary[:12], quote(canary, safe="")):
            assert form.encode() not in data, (what, form)


def assert_arrived(server: Gateway) -> None:
    """Each request carried the key at the end of its URL and in its header."""
    assert server.requests
    for line, headers in server.requests:
        _method, target, _ = line.split(" ")
        path, _, query = target.partition("?")
        assert path in ("/v1/chat/completions", "/v1/models"), line
        assert query == f"key={QUERY_CANARY}", line
        assert headers["x-gateway-key"] == HEADER_CANARY
        assert headers["user-agent"] == "flowyard-e2e"


def db_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


@pytest.mark.parametrize("answer", [error_answer(401), error_answer(500), completion_answer],
                         ids=["401", "500", "200"])
def test_gateway_secrets_reach_the_gateway_and_nothing_else(
        answer: Answer, gateway: Callable[[Answer], Gateway], tmp_path: Path,
        flowyard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = gateway(answer)
    db = setup_project(tmp_path, server, monkeypatch)
    runner = CliRunner()

    ran = runner.invoke(cli, ["run", "wf.yaml", "--json", "--run-id", "r1"])
    assert ran.exit_code in (0, 1), ran.output
    assert_arrived(server)
    assert_clean("run --json", ran.output)
    result = json.loads(ran.output)
    if answer is completion_answer:
        assert result["status"] == "completed"
        assert "***" in json.dumps(result)  # the echoed secrets were in the answer, redacted
    else:
        assert result["status"] == "failed"
        assert "***" in json.dumps(result)

    plain = runner.invoke(cli, ["run", "wf.yaml", "--run-id", "r2"])
    assert plain.exit_code in (0, 1), plain.output
    assert_clean("run", plain.output)

    for args in (["runs", "show", "r1"], ["runs", "show", "r1", "--json"],
                 ["runs", "show", "r2"], ["runs", "logs", "r1"]):
        shown = runner.invoke(cli, args)
        assert shown.exit_code == 0, shown.output
        assert_clean(" ".join(args), shown.output)

    doctor = runner.invoke(cli, ["doctor", "--json", "--timeout", "5"])
    assert_clean("doctor --json", doctor.output)
    assert '"gw"' in doctor.output  # the provider was checked
    assert_arrived(server)

    data = db_bytes(db)
    assert b"***" in data  # the redacted text was stored: the search is not vacuous
    assert_clean("database", data)


@pytest.mark.anyio
async def test_no_event_of_a_run_carries_a_gateway_secret(
        gateway: Callable[[Answer], Gateway], tmp_path: Path, flowyard_home: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = gateway(error_answer(401))
    db = setup_project(tmp_path, server, monkeypatch)
    events: list[Event] = []
    stack = Stack(discover=True)
    async with stack:
        provider: Any = stack.providers.get("gw")
        assert_clean("repr(provider)", repr(provider))
        stack.events.subscribe(events.append, name="test")
        result = await stack.run(stack.load_workflow(tmp_path / "wf.yaml"), {})
    assert result.status == "failed"
    assert_arrived(server)
    assert any(e.type == "llm.error" for e in events)
    assert_clean("result.error", result.error or "")
    for event in events:
        assert_clean(event.type, json.dumps(event.data, default=str))
    assert_clean("database", db_bytes(db))
