"""RedisStorage beyond the contract: damaged values, the eviction-policy check, native key
expiry, URLs and prefixes, the plugin's registration, and the CLI on a damaged store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import redis
from flowyard import (
    AuditRecord,
    RunQuery,
    RunRecord,
    Stack,
    StorageError,
    TaskRecord,
    new_id,
)
from flowyard_redis.storage import RedisStorage
from flowyard_redis.testing import RedisServer, RedisServerError

pytestmark = pytest.mark.anyio


def _raw(storage: RedisStorage) -> redis.Redis:
    return redis.Redis.from_url(storage._client_url)


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00", b"[1, 2]",
                                     b'{"id": "x", "bogus": 1}'])
async def test_a_damaged_run_raises_a_storage_error_naming_its_key(
        redis_storage: RedisStorage, garbage: bytes) -> None:
    run = RunRecord(id=new_id(), workflow_name="w")
    await redis_storage.create_run(run)
    key = redis_storage.k("run", run.id)
    with _raw(redis_storage) as c:
        c.set(key, garbage)
    with pytest.raises(StorageError) as info:
        await redis_storage.get_run(run.id)
    assert key in str(info.value) and "damaged" in str(info.value)
    assert info.value.retriable is False
    with pytest.raises(StorageError, match="damaged"):
        await redis_storage.list_runs(RunQuery())


async def test_damaged_checkpoints_tasks_events_and_kv_name_their_key(
        redis_storage: RedisStorage) -> None:
    run = RunRecord(id=new_id(), workflow_name="w")
    await redis_storage.create_run(run)
    await redis_storage.save_checkpoint(run.id, "a", {"ok": 1})
    task = TaskRecord(id=new_id(), tenant="t", kind="workflow", target="w")
    await redis_storage.submit_task(task)
    await redis_storage.kv_set("ns", "k", 1)
    with _raw(redis_storage) as c:
        c.hset(redis_storage.k("ckpt", run.id), "a", "{oops")
        c.hset(redis_storage.k("task", task.id), "inputs", "not json")
        c.hset(redis_storage.k("ev", run.id), "1", "garbage")
        c.zadd(redis_storage.k("evs", run.id), {"1": 1})
        c.set(redis_storage.k("kv", "ns", "k"), b"\x80")
    checks = [
        (redis_storage.load_checkpoints(run.id), redis_storage.k("ckpt", run.id)),
        (redis_storage.get_task(task.id), redis_storage.k("task", task.id)),
        (redis_storage.list_events(run.id), redis_storage.k("ev", run.id)),
        (redis_storage.kv_get("ns", "k"), redis_storage.k("kv", "ns", "k")),
    ]
    for call, key in checks:
        with pytest.raises(StorageError) as info:
            await call
        assert key in str(info.value), str(info.value)


async def test_a_damaged_audit_record_names_its_seq(redis_storage: RedisStorage) -> None:
    await redis_storage.append_audit([AuditRecord(action="a", actor="u")])
    with _raw(redis_storage) as c:
        c.hset(redis_storage.k("audit"), "1", "{")
    with pytest.raises(StorageError, match=r"seq 1"):
        await redis_storage.list_audit()


async def test_an_evicting_redis_is_refused_unless_allowed(tmp_path: Path) -> None:
    server = RedisServer(maxmemory_policy="allkeys-lru", data_dir=tmp_path / "lru")
    server.start()
    try:
        storage = RedisStorage(server.url)
        with pytest.raises(StorageError, match=r"maxmemory-policy 'allkeys-lru'.*noeviction"):
            await storage.open()
        allowed = RedisStorage(server.url + "?allow_eviction=1")
        await allowed.open()
        await allowed.kv_set("ns", "k", 1)
        assert await allowed.kv_get("ns", "k") == 1
        await allowed.close()
    finally:
        server.stop()


async def test_kv_set_ttl_uses_native_expiry(redis_storage: RedisStorage) -> None:
    await redis_storage.kv_set_ttl("cache", "h1", {"answer": 42}, ttl_s=0.3)
    await redis_storage.kv_set("cache", "h2", "kept")
    key = redis_storage.k("kv", "cache", "h1")
    with _raw(redis_storage) as c:
        assert 0 < c.pttl(key) <= 300
        assert c.pttl(redis_storage.k("kv", "cache", "h2")) == -1
    assert await redis_storage.kv_get("cache", "h1") == {"answer": 42}
    with anyio.fail_after(10):
        while await redis_storage.kv_get("cache", "h1") is not None:
            await anyio.sleep(0.05)
    assert await redis_storage.kv_list("cache") == [("h2", "kept")]
    for bad in (0, -1.0, float("nan"), "5", True):
        with pytest.raises(ValueError):
            await redis_storage.kv_set_ttl("cache", "h3", 1, ttl_s=bad)  # type: ignore[arg-type]


async def test_namespaces_with_colons_do_not_collide(redis_storage: RedisStorage) -> None:
    await redis_storage.kv_set("a:b", "c", 1)
    await redis_storage.kv_set("a", "b:c", 2)
    assert await redis_storage.kv_get("a:b", "c") == 1
    assert await redis_storage.kv_get("a", "b:c") == 2
    assert await redis_storage.kv_list("a:b") == [("c", 1)]
    assert await redis_storage.kv_list("a") == [("b:c", 2)]


async def test_prefixes_separate_stores(redis_server: RedisServer) -> None:
    first = RedisStorage(f"{redis_server.url}?prefix=one{new_id()[:8]}:")
    second = RedisStorage(f"{redis_server.url}?prefix=two{new_id()[:8]}:&socket_timeout=5")
    await first.open()
    await second.open()
    try:
        await first.create_run(RunRecord(id="same-id", workflow_name="w"))
        await second.create_run(RunRecord(id="same-id", workflow_name="other"))
        assert (await first.get_run("same-id")).workflow_name == "w"
        assert (await second.get_run("same-id")).workflow_name == "other"
    finally:
        await first.close()
        await second.close()
        await first.close()  # twice is safe


async def test_errors_name_the_url_without_its_password() -> None:
    with pytest.raises(StorageError, match="not a Redis URL"):
        RedisStorage("postgresql://x")
    storage = RedisStorage("redis://user:s3cret@127.0.0.1:1/0")
    with pytest.raises(StorageError) as info:
        await storage.open()
    assert info.value.retriable and "s3cret" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)
    with pytest.raises(StorageError, match="not open"):
        await storage.get_run("x")


async def test_the_stack_opens_redis_urls_through_the_plugin(redis_url: str) -> None:
    stack = Stack.default(config={"storage": {"url": redis_url}})
    await stack.open()
    try:
        assert isinstance(stack.storage, RedisStorage)
        result = await stack.run({"name": "hello", "steps": [
            {"id": "say", "uses": "echo", "with": {"value": "hi"}}]})
        assert result.status == "completed"
        stored = await stack.storage.get_run(result.run_id)
        assert stored.status == "completed"
        assert await stack.storage.load_checkpoints(result.run_id)
    finally:
        await stack.aclose()


def test_a_damaged_store_gives_the_cli_a_clear_error(redis_server: RedisServer,
                                                     tmp_path: Path) -> None:
    prefix = f"cli{new_id()[:8]}:"
    with redis.Redis.from_url(redis_server.url) as c:
        c.set(f"{prefix}run:bad", "{garbage")
        c.zadd(f"{prefix}runs", {"bad": 1.0})
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    env.update({"FLOWYARD_STORAGE_URL": f"{redis_server.url}?prefix={prefix}",
                "FLOWYARD_DATA_DIR": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)})
    exe = Path(sys.executable).parent / "flowyard"
    done = subprocess.run([str(exe), "runs", "list"], env=env, text=True, capture_output=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode != 0
    assert f"{prefix}run:bad" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_a_missing_redis_server_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import flowyard_redis.testing as testing

    monkeypatch.setenv("FLOWYARD_REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(RedisServerError, match="not an executable"):
        RedisServer()
    monkeypatch.delenv("FLOWYARD_REDIS_SERVER")
    monkeypatch.setattr(testing.os, "access", lambda path, mode: False)
    with pytest.raises(RedisServerError, match=r"scripts/system-deps\.sh"):
        RedisServer()


async def test_the_response_cache_on_redis_expires_entries_natively(redis_url: str) -> None:
    """`[cache] url = "redis://..."`: the second identical call is a hit, and the entry
    carries a native Redis expiry (``ttl_s``), not one stored in the value only.
    """
    stack = Stack.default(config={"storage": {"url": "memory://"},
                                  "cache": {"url": redis_url, "ttl_s": 120}})
    workflow = {"name": "cached", "steps": [
        {"id": "ask", "uses": "llm.chat",
         "with": {"model": "fake/echo", "prompt": "same question", "temperature": 0,
                  "cache": True}}]}
    await stack.open()
    try:
        first = await stack.run(workflow)
        second = await stack.run(workflow)
        assert first.status == second.status == "completed"
        kinds = [[e.type for e in await stack.storage.list_events(r.run_id)]
                 for r in (first, second)]
        assert "llm.cache.miss" in kinds[0] and "llm.cache.hit" in kinds[1], kinds
    finally:
        await stack.aclose()
    cache = RedisStorage(redis_url)
    await cache.open()
    try:
        entries = await cache.kv_list("llm.cache")
        assert len(entries) == 1
        with _raw(cache) as c:
            ttl_ms = c.pttl(cache.k("kv", "llm.cache", entries[0][0]))
        assert 0 < ttl_ms <= 120_000
    finally:
        await cache.close()


def test_installing_the_plugin_does_not_change_the_default_storage(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without ``storage.url`` the stack keeps its default (SQLite with flowyard-sql, else
    the in-core memory backend); Redis is used only when a URL names it.
    """
    monkeypatch.delenv("FLOWYARD_STORAGE_URL", raising=False)
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("FLOWYARD_CONFIG", str(tmp_path / "empty.toml"))
    stack = Stack.default()
    assert "redis" in stack.storage_schemes.names()
    assert not stack.storage_url().startswith("redis")
