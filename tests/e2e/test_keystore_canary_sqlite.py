"""A canary key in the key store, used by a provider, appears nowhere else (issue 22, item 1).

The key is stored with ``flowyard keys set`` (file backend, passphrase from the environment)
and referenced as ``api_key = "keystore:gw"`` by an OpenAI-compatible endpoint on 127.0.0.1
that records every request and echoes its headers (the ``Authorization: Bearer <canary>``
among them) back in its answers: a 401, a 500 and a 200 completion. The test checks that the
key arrives where it belongs (the bearer header) and that it appears in none of: the stdout
and stderr of ``flowyard run`` (plain, ``--json``, with ``FLOWYARD_TRACE_PLUGINS=1`` and
``FLOWYARD_TRACEBACK=1``), ``flowyard runs show|logs``, ``flowyard doctor --json``, the
``flowyard keys`` commands, the events and log records of an in-process run, the provider's
repr, the bytes of the SQLite database (WAL included; runs, events, checkpoints) and the bytes
of the key-store file (encrypted). A wrong passphrase fails the run with an error naming the
key-store file, not the key.

A cross-distribution test (the core's key store, flowyard-openai, flowyard-sql), so it lives in
tests/.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flowyard import Config, KeyStoreError, open_keystore
from flowyard.models import Event
from flowyard.stack import Stack

CANARY = "sk-canary-a41f7c09d3e25b68e1"
PASSPHRASE = "keystore canary passphrase"

WORKFLOW = """\
name: keyed
steps:
  - id: ask
    uses: llm.chat
    with: {prompt: "hello", model: gw/m}
outputs:
  answer: "${ask}"
"""

Answer = Callable[[str], tuple[int, str]]


class Gateway:
    """An OpenAI-compatible server on a free 127.0.0.1 port that records and echoes requests."""

    def __init__(self, answer: Answer) -> None:
        self.requests: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append(headers)
                status, text = answer(f"{self.requestline} {headers}".replace('"', "'"))
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
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
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
    """Write flowyard.toml and the workflow, store the canary; return the database path."""
    db = tmp_path / "runs.db"
    (tmp_path / "flowyard.toml").write_text(
        f'[storage]\nurl = "sqlite:///{db}"\n\n'
        f'[keystore]\nbackend = "file"\npath = "{tmp_path / "keys.json"}"\nscrypt_n = 16384\n\n'
        f'[openai.endpoints.gw]\nbase_url = "{server.base_url}"\napi_key = "keystore:gw"\n'
        "free = true\ntimeout = 5\n", encoding="utf-8")
    (tmp_path / "wf.yaml").write_text(WORKFLOW, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLOWYARD_CONFIG", str(tmp_path / "flowyard.toml"))
    monkeypatch.setenv("FLOWYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FLOWYARD_STORAGE_URL", raising=False)
    monkeypatch.setenv("FLOWYARD_PLUGINS", "builtin,openai,sql")
    monkeypatch.setenv("FLOWYARD_STRICT_PLUGINS", "1")
    monkeypatch.setenv("FLOWYARD_KEYSTORE_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    stored = flowyard("keys", "set", "gw", stdin=CANARY + "\n")
    assert stored.returncode == 0, stored.stderr
    assert_clean("keys set", stored.stdout + stored.stderr)
    return db


def flowyard(*args: str, stdin: str = "", env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    """The real CLI in a new process: its stdout and stderr as a user sees them."""
    return subprocess.run([sys.executable, "-c", "from flowyard.cli import main; main()", *args],
                          input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def assert_clean(what: str, text: str | bytes) -> None:
    """Not the canary, nor a 12-character piece of it, nor its percent-encoded form."""
    data = text.encode() if isinstance(text, str) else text
    for form in (CANARY, CANARY[:12], CANARY[-12:], quote(CANARY, safe="")):
        assert form.encode() not in data, (what, form)


def assert_arrived(server: Gateway) -> None:
    assert server.requests
    for headers in server.requests:
        assert headers["authorization"] == f"Bearer {CANARY}"


def db_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


@pytest.mark.parametrize("answer", [error_answer(401), error_answer(500), completion_answer],
                         ids=["401", "500", "200"])
def test_a_keystore_canary_reaches_the_server_and_nothing_else(
        answer: Answer, gateway: Callable[[Answer], Gateway], tmp_path: Path,
        flowyard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = gateway(answer)
    db = setup_project(tmp_path, server, monkeypatch)

    ran = flowyard("run", "wf.yaml", "--json", "--run-id", "r1", "--no-live")
    assert ran.returncode in (0, 1), ran.stderr
    assert_arrived(server)
    assert_clean("run --json stdout", ran.stdout)
    assert_clean("run --json stderr", ran.stderr)
    result = json.loads(ran.stdout)
    assert result["status"] == ("completed" if answer is completion_answer else "failed")
    assert "***" in json.dumps(result)  # the echoed key was in the answer, redacted

    verbose = flowyard("run", "wf.yaml", "--run-id", "r2", "--no-live",
                       env={"FLOWYARD_TRACE_PLUGINS": "1", "FLOWYARD_TRACEBACK": "1"})
    assert verbose.returncode in (0, 1), verbose.stderr
    assert verbose.stderr  # the hook trace: the search is not vacuous
    assert_clean("run (traced) stdout", verbose.stdout)
    assert_clean("run (traced) stderr", verbose.stderr)

    for args in (["runs", "show", "r1"], ["runs", "show", "r1", "--json"],
                 ["runs", "logs", "r1"], ["runs", "show", "r2"],
                 ["doctor", "--json", "--timeout", "5"], ["keys", "list"],
                 ["keys", "get", "gw"], ["providers"]):
        shown = flowyard(*args)
        assert_clean(" ".join(args), shown.stdout + shown.stderr)
    assert_arrived(server)
    audit = flowyard("audit", "list")
    assert audit.returncode == 0, audit.stderr
    assert "key.used" in audit.stdout and "gw" in audit.stdout  # the use is audited, by name
    assert_clean("audit list", audit.stdout + audit.stderr)
    verified = flowyard("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr

    data = db_bytes(db)
    assert b"***" in data and b"r1" in data  # stored runs and redacted text: not vacuous
    assert_clean("database", data)
    key_file = (tmp_path / "keys.json").read_bytes()
    assert_clean("key-store file", key_file)
    assert b"gw" not in key_file  # the names are encrypted too


@pytest.mark.anyio
async def test_no_event_log_record_or_repr_carries_a_keystore_canary(
        gateway: Callable[[Answer], Gateway], tmp_path: Path, flowyard_home: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    server = gateway(error_answer(401))
    db = setup_project(tmp_path, server, monkeypatch)
    caplog.set_level(logging.DEBUG)
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
    assert_clean("repr(result)", repr(result))
    for event in events:
        assert_clean(event.type, json.dumps(event.data, default=str))
    assert caplog.records  # something was logged: the search is not vacuous
    for record in caplog.records:
        assert_clean(f"log {record.name}", record.getMessage())
        assert_clean(f"log {record.name} args", repr(record.args))
    assert_clean("database", db_bytes(db))


def test_a_wrong_passphrase_fails_the_run_naming_the_file_not_the_key(
        gateway: Callable[[Answer], Gateway], tmp_path: Path, flowyard_home: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = gateway(completion_answer)
    db = setup_project(tmp_path, server, monkeypatch)
    before = (tmp_path / "keys.json").read_bytes()
    ran = flowyard("run", "wf.yaml", "--json", "--run-id", "w1", "--no-live",
                   env={"FLOWYARD_KEYSTORE_PASSPHRASE": "not it"})
    assert ran.returncode == 1
    assert_clean("run stdout", ran.stdout)
    assert_clean("run stderr", ran.stderr)
    assert "wrong passphrase" in ran.stdout + ran.stderr
    assert str(tmp_path / "keys.json") in ran.stdout + ran.stderr
    assert server.requests == []  # no request went out without the key
    assert (tmp_path / "keys.json").read_bytes() == before
    assert_clean("database", db_bytes(db))


@pytest.mark.anyio
@pytest.mark.parametrize("plugin", ["anthropic", "ollama", "openai"])
async def test_every_http_provider_plugin_resolves_keystore_references(
        plugin: str, tmp_path: Path, flowyard_home: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack's own configuration (here given in code) says where the key store is."""
    monkeypatch.setenv("FLOWYARD_KEYSTORE_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    keystore = {"backend": "file", "path": str(tmp_path / "k.json"), "scrypt_n": 16384}
    open_keystore(Config({"keystore": keystore}), passphrase=None).set(f"{plugin}-key", CANARY)
    config = {"keystore": keystore, "plugins": {"enabled": ["builtin", plugin]},
              plugin: {"api_key": f"keystore:{plugin}-key",
                       "base_url": "http://127.0.0.1:9/v1"}}
    async with Stack(config=config, discover=True) as stack:
        provider: Any = stack.providers.get(plugin)
        assert provider._api_key.get() == CANARY
        assert_clean("repr(provider)", repr(provider))
    config[plugin]["api_key"] = f"keystore:{plugin}-missing"
    async with Stack(config=config, discover=True) as stack:
        with pytest.raises(KeyStoreError, match=f"no key named '{plugin}-missing'") as info:
            stack.providers.get(plugin)
        assert_clean("error", str(info.value))
