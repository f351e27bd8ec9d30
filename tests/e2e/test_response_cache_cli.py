"""The response cache through the CLI on a SQLite file and on PostgreSQL, shared by separate
processes:
``flowyard run`` twice (the second answers from the cache at zero cost), ``flowyard cache
stats`` and ``clear``, and a damaged entry reported, not skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowyard import Stack

FLOWYARD = str(Path(sys.executable).with_name("flowyard"))

WORKFLOW = """\
name: cached
steps:
  - id: ask
    uses: llm.chat
    with:
      prompt: "What is 2 + 2?"
      model: fake/priced
      temperature: 0
      max_tokens: 20
      cache: {ttl_s: 3600}
outputs:
  answer: "${ask}"
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    server = request.getfixturevalue("postgres_server")
    return str(server.url(server.create_database()))


def _cli(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLOWYARD_STORAGE__URL": url}
    return subprocess.run([FLOWYARD, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_second_process_answers_from_the_cache_and_the_cli_manages_it(
        tmp_path: Path, storage_url: str) -> None:
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    first = _cli(tmp_path, storage_url, "run", "wf.yaml", "--json")
    assert first.returncode == 0, first.stderr
    second = _cli(tmp_path, storage_url, "run", "wf.yaml", "--json")
    assert second.returncode == 0, second.stderr
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert one["outputs"] == two["outputs"] == {"answer": "echo: What is 2 + 2?"}
    assert one["cost_usd"] > 0 and two["cost_usd"] == 0.0
    assert two["steps"]["ask"]["input_tokens"] == 0

    async def inspect() -> tuple[list[str], int]:
        stack = Stack.default(config={"storage": {"url": storage_url}})
        async with stack:
            events = await stack.storage.list_events(two["run_id"])
            costs = await stack.storage.list_costs()
            await stack.storage.kv_set("llm.cache", "damaged", ["not", "an", "entry"])
        return [e.type for e in events if e.type.startswith("llm.")], len(costs)

    kinds, cost_lines = anyio.run(inspect)
    assert kinds == ["llm.cache.hit"]  # no llm.call: the provider was not asked
    assert cost_lines == 1

    stats = _cli(tmp_path, storage_url, "cache", "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    figures: dict[str, Any] = json.loads(stats.stdout)
    assert figures["entries"] == 1 and figures["damaged"] == 1
    assert figures["saved_usd_per_hit"] == one["cost_usd"]
    cleared = _cli(tmp_path, storage_url, "cache", "clear", "--expired")
    assert cleared.returncode == 0 and "deleted 1 " in cleared.stdout
    cleared = _cli(tmp_path, storage_url, "cache", "clear")
    assert cleared.returncode == 0 and "deleted 1 " in cleared.stdout
    third = _cli(tmp_path, storage_url, "run", "wf.yaml", "--json")
    assert json.loads(third.stdout)["cost_usd"] > 0  # cleared: a real call again
