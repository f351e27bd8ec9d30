"""Alert delivery to real servers on 127.0.0.1: a webhook receiver that fails twice then
accepts (the channel retries with backoff), and SMTP delivery to a local aiosmtpd server.
Rules fire and resolve on a virtual clock; the notices go out through the stack's channels.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flowyard.alerts import AlertManager, DeliveryError, WebhookChannel, parse_rules
from flowyard.clock import VirtualClock
from flowyard.models import Event
from flowyard.stack import Stack

pytestmark = pytest.mark.anyio


class _Receiver(BaseHTTPRequestHandler):
    """Answers 503 to the first ``fail`` POSTs, then 200; keeps every body."""

    fail = 2
    bodies: list[dict[str, Any]] = []
    hits = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        type(self).hits += 1
        if type(self).hits <= type(self).fail:
            self.send_response(503)
            self.end_headers()
            return
        type(self).bodies.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.fail, _Receiver.bodies, _Receiver.hits = 2, [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def _stack_and_manager(channels: dict[str, Any], clock: VirtualClock
                       ) -> tuple[Stack, AlertManager, list[Event]]:
    stack = Stack(config={"audit": {"enabled": False}})
    rules = parse_rules([{"name": "breaker", "metric": "breaker_open", "threshold": 1,
                          "severity": "critical", "labels": {"team": "ops"},
                          "channels": list(channels)}])
    manager = AlertManager(stack, rules, channels=channels, interval_s=1e9, clock=clock,
                           wall=lambda: 1_700_000_000.0 + clock.now())
    events: list[Event] = []
    stack.events.subscribe(events.append, name="spy")
    stack.events.subscribe(manager, name="alerts-under-test")
    return stack, manager, events


async def test_webhook_retries_until_the_receiver_accepts(receiver: str) -> None:
    clock = VirtualClock()
    stack, manager, events = _stack_and_manager(
        {"hook": {"type": "webhook", "url": receiver, "backoff_s": 0.01,
                  "headers": {"X-Team": "ops"}}}, clock)
    stack.events.make("circuit.state", provider="openai", old="closed", new="open")
    [notice] = await manager.evaluate()
    assert notice.state == "firing"
    assert _Receiver.hits == 3  # 503, 503, 200
    [body] = _Receiver.bodies
    assert body["state"] == "firing" and body["rule"] == "breaker" and body["value"] == 1.0
    assert body["labels"] == {"team": "ops"} and body["severity"] == "critical"
    assert manager.delivered == {"hook": 1}
    await clock.advance(5)
    assert await manager.evaluate() == []  # de-duplicated
    stack.events.make("circuit.state", provider="openai", old="open", new="closed")
    [resolved] = await manager.evaluate()
    assert resolved.state == "resolved"
    assert [b["state"] for b in _Receiver.bodies] == ["firing", "resolved"]
    assert not [e for e in events if e.type == "alert.delivery_failed"]


async def test_webhook_gives_up_after_its_attempts(receiver: str) -> None:
    _Receiver.fail = 100
    channel = WebhookChannel("hook", {"url": receiver, "attempts": 3, "backoff_s": 0.01})
    clock = VirtualClock()
    stack, manager, events = _stack_and_manager(
        {"hook": {"type": "webhook", "url": receiver, "attempts": 3, "backoff_s": 0.01}}, clock)
    stack.events.make("circuit.state", provider="openai", old="closed", new="open")
    await manager.evaluate()
    [failed] = [e for e in events if e.type == "alert.delivery_failed"]
    assert failed.data["channel"] == "hook" and "3 attempt(s) failed" in failed.data["error"]
    assert _Receiver.hits == 3 and manager.delivered == {}
    with pytest.raises(DeliveryError, match="HTTP 503"):
        await channel.send(manager._notice(manager.rules[0], "firing", 1.0,
                                           manager._states["breaker"]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_email_reaches_a_local_smtp_server() -> None:
    from aiosmtpd.controller import Controller

    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope)
            return "250 OK"

    port = _free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        clock = VirtualClock()
        stack, manager, _ = _stack_and_manager(
            {"mail": {"type": "email", "host": "127.0.0.1", "port": port,
                      "from": "flowyard@example.test", "to": ["oncall@example.test"]}}, clock)
        stack.events.make("circuit.state", provider="openai", old="closed", new="open")
        await manager.evaluate()
        stack.events.make("circuit.state", provider="openai", old="open", new="closed")
        await manager.evaluate()
    finally:
        controller.stop()
    assert [e.rcpt_tos for e in received] == [["oncall@example.test"]] * 2
    subjects = [message_from_bytes(e.content)["Subject"] for e in received]
    assert subjects == ["[flowyard] FIRING: breaker", "[flowyard] RESOLVED: breaker"]
    assert "breaker_open=1" in message_from_bytes(received[0].content).get_payload()
    assert manager.delivered == {"mail": 2}
