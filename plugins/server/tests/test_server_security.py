"""Security by default: body limits that keep the server responsive, keys stored only as
digests and never shown in responses or logs, loopback-only serving without keys, and the
``flowyard api-keys`` commands.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner
from flowyard import Stack


def test_oversized_body_is_413_and_the_server_stays_responsive(server: Any) -> None:
    big = {"target": "hello", "inputs": {"x": "y" * (200 * 1024)}}
    with server.client("a") as client:
        started = time.monotonic()
        response = client.post("/v1/tasks", json=big)
        assert response.status_code == 413 and response.json()["code"] == "payload_too_large"
        chunked = client.post("/v1/tasks", content=iter([b"{" + b" " * 40_000] * 3),
                              headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        assert client.get("/v1/health/live").status_code == 200
        assert time.monotonic() - started < 5


def test_declared_oversized_body_is_refused_before_it_is_sent(server: Any) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + server.keys["a"].encode() +
                     b"\r\nContent-Length: 999999999\r\n\r\n{")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")


def test_deep_json_is_422_and_the_server_stays_responsive(server: Any) -> None:
    deep = '{"target": "hello", "inputs": {"x": ' + "[" * 20_000 + "]" * 20_000 + "}}"
    with server.client("a") as client:
        response = client.post("/v1/tasks", content=deep,
                               headers={"content-type": "application/json"})
        assert response.status_code == 422 and response.json()["code"] == "validation_error"
        # brackets inside strings do not count
        fine = client.post("/v1/workflows/validate",
                           json={"source": "name: x\n# " + "[" * 500 + "\n"})
        assert fine.status_code == 200
        assert client.get("/v1/health/live").status_code == 200


def test_json_depth_scanner() -> None:
    from flowyard_server.security import json_depth_exceeds

    assert not json_depth_exceeds(b'{"a": [[1]]}', 3)
    assert json_depth_exceeds(b'{"a": [[[1]]]}', 3)
    assert not json_depth_exceeds(b'{"a": "[[[[[[\\"[[[["}', 2)


def test_keys_are_stored_as_digests_and_never_shown(server: Any) -> None:
    async def stored() -> list[Any]:
        return await server.stack.storage.kv_list("server.keys", limit=100)

    entries = anyio.run(stored)
    text = json.dumps(entries)
    for key in server.keys.values():
        secret = key.split("_", 2)[2]
        assert secret not in text
    assert all(set(e) == {"tenant", "name", "created_at", "salt", "digest"} for _, e in entries)
    assert len({e["salt"] for _, e in entries}) == len(entries)


def test_keys_never_in_responses_or_logs(server: Any, registered: dict[str, str],
                                         waiter: Any) -> None:
    key = server.keys["a"]
    with server.client("a") as client:
        bodies = [client.post("/v1/tasks", json={"target": "hello", "inputs": {}}).text,
                  client.post("/v1/tasks", json={"target": key}).text,
                  client.post("/v1/tasks", json={"target": "hello", "bad": key}).text,
                  client.get("/v1/tasks").text, client.get("/metrics").text]
    with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer " + key[:-1]}) as c:
        bodies.append(c.get("/v1/tasks").text)
    for body in bodies:
        assert key not in body
        assert key.split("_", 2)[2] not in body
    time.sleep(0.2)
    logged = "\n".join(server.logs.lines)
    assert "uvicorn.access" in logged  # the access log was captured
    assert key not in logged and key.split("_", 2)[2] not in logged


def test_binding_beyond_loopback_without_keys_is_refused(tmp_path: Any) -> None:
    from flowyard.cli import cli as main

    runner = CliRunner()
    env = {"FLOWYARD_HOME": str(tmp_path), "FLOWYARD_STORAGE_URL": "memory://"}
    result = runner.invoke(main, ["serve", "--host", "0.0.0.0", "--port", "1"], env=env)
    assert result.exit_code != 0
    assert "refusing to bind 0.0.0.0" in result.output


def test_check_binding() -> None:
    from flowyard_server.commands import BindingRefused, check_binding

    check_binding("127.0.0.1", loopback=True, have_keys=False)
    check_binding("0.0.0.0", loopback=False, have_keys=True)
    with pytest.raises(BindingRefused):
        check_binding("0.0.0.0", loopback=False, have_keys=False)


@pytest.mark.anyio
async def test_without_keys_only_loopback_clients_are_served() -> None:
    from flowyard_server.app import create_app
    from flowyard_server.settings import ServerSettings

    stack = Stack(config={"storage": {"url": "memory://"}})
    async with stack:
        app = create_app(stack, ServerSettings(worker=False))
        local = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        remote = httpx.ASGITransport(app=app, client=("10.1.2.3", 5000))
        async with httpx.AsyncClient(transport=local, base_url="http://t") as client:
            assert (await client.get("/v1/tasks")).status_code == 200
        async with httpx.AsyncClient(transport=remote, base_url="http://t") as client:
            assert (await client.get("/v1/tasks")).status_code == 401


def test_keys_commands(tmp_path: Any) -> None:
    from flowyard.cli import cli as main

    db = tmp_path / "keys.json"
    assert not db.exists()
    runner = CliRunner()
    env = {"FLOWYARD_HOME": str(tmp_path), "FLOWYARD_STORAGE_URL": "memory://"}
    created = runner.invoke(main, ["api-keys", "create", "--tenant", "acme", "--name", "ci"],
                            env=env)
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("fy_")
    # memory storage forgets between commands: list and revoke answer on an empty store
    listed = runner.invoke(main, ["api-keys", "list"], env=env)
    assert listed.exit_code == 0 and key not in listed.output
    revoked = runner.invoke(main, ["api-keys", "revoke", key], env=env)
    assert revoked.exit_code != 0 and key not in revoked.output
    bad = runner.invoke(main, ["api-keys", "create", "--tenant", "Bad Tenant!"], env=env)
    assert bad.exit_code != 0


@pytest.mark.anyio
async def test_key_store_lifecycle() -> None:
    from flowyard_server.keys import KeyStore

    stack = Stack(config={"storage": {"url": "memory://"}})
    async with stack:
        store = KeyStore(stack.storage)
        assert not await store.any_keys()
        key, info = await store.create("acme", name="ci")
        assert await store.any_keys()
        assert await store.verify(key) == "acme"
        assert await store.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert await store.verify("fy_" + info.key_id + "_short") is None
        assert [k.key_id for k in await store.list()] == [info.key_id]
        assert await store.revoke(info.key_id)
        assert await store.verify(key) is None
        assert not await store.revoke(info.key_id)
        with pytest.raises(ValueError):
            await store.create("UPPER")


@pytest.mark.anyio
async def test_key_cache_trusts_a_verified_key_for_a_few_seconds_only() -> None:
    """A verified key is trusted from memory for ``cache_seconds``: a revocation through the
    same store counts at once, one through another store (another process) once the time
    passed; a wrong key is never cached; the key itself is not kept.
    """
    from flowyard_server.keys import KeyStore

    stack = Stack(config={"storage": {"url": "memory://"}})
    async with stack:
        server = KeyStore(stack.storage, cache_seconds=0.3)
        cli = KeyStore(stack.storage)
        key, info = await cli.create("acme")
        other, other_info = await cli.create("beta")
        assert await server.verify(key) == "acme"
        assert await server.verify(other) == "beta"
        assert all(key not in repr(v) and key.encode() not in k
                   for k, v in server._verified.items())
        wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
        assert await server.verify(wrong) is None
        assert len(server._verified) == 2
        assert await cli.revoke(info.key_id)  # another process: trusted until the cache ends
        assert await server.verify(key) == "acme"
        await anyio.sleep(0.35)
        assert await server.verify(key) is None
        assert await server.revoke(other_info.key_id)  # this store: at once
        assert await server.verify(other) is None


def test_values_that_cannot_be_stored_are_422(server: Any, registered: dict[str, str]) -> None:
    with server.client("a") as client:
        for body in (b'{"target": "hello", "inputs": {"x": "\\ud800"}}',
                     b'{"target": "hello", "inputs": {"x": 1e999}}',
                     b'{"target": "hello", "metadata": {"\\udfff": 1}}',
                     b'{"name": "agent \\ud800"}'):
            path = "/v1/agents" if b"agent" in body else "/v1/tasks"
            response = client.post(path, content=body,
                                   headers={"content-type": "application/json"})
            assert response.status_code == 422, (body, response.text)
        assert client.get("/v1/health/live").status_code == 200
