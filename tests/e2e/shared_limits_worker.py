"""One worker process of ``test_shared_limits_processes.py``: its own Stack on the shared
backend, calling the test's OpenAI-compatible server on 127.0.0.1.

Run as ``python shared_limits_worker.py <settings.json>``; the settings give ``config`` (the
stack's configuration), ``mode``, ``calls``, ``folder`` and ``index``. The worker opens its
stack and the shared limits, writes ``ready-<index>`` in the folder, waits for ``go`` (written
by the test once every worker is ready; a deadline, not a fixed sleep), runs its mode and
writes ``result-<index>.json``:

* ``calls``: ``calls`` concurrent ``llm.chat`` calls to ``srv/m``: ``{"ok", "budget",
  "rate", "other": [errors], "cost_usd"}``;
* ``open-breaker``: calls ``srv/fail`` (answered 500) until the breaker of ``srv`` is open:
  ``{"failures", "opened"}``;
* ``breaker-check``: one call to ``srv/m``: ``{"circuit_open", "error"}``;
* ``hang``: one call to ``srv/slow``, which the server never answers (the test kills the
  worker while the call holds its concurrency slot and budget reservation).

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from flowyard.errors import BudgetExceeded, CircuitOpenError, RateLimitedError, ServerError
from flowyard.stack import Stack


async def _wait_for(path: Path, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {deadline_s:g} s")
        await anyio.sleep(0.01)


async def _calls(stack: Stack, count: int) -> dict[str, Any]:
    result: dict[str, Any] = {"ok": 0, "budget": 0, "rate": 0, "other": [], "cost_usd": 0.0}

    async def one() -> None:
        try:
            response = await stack.llm.chat("hi", model="srv/m", max_tokens=100)
        except BudgetExceeded as exc:
            assert exc.scope == "global", exc
            result["budget"] += 1
        except RateLimitedError as exc:
            assert "max_wait_s" in str(exc), exc
            result["rate"] += 1
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            result["other"].append(f"{type(exc).__name__}: {exc}")
        else:
            result["ok"] += 1
            result["cost_usd"] += response.cost_usd or 0.0

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)
    return result


async def _open_breaker(stack: Stack) -> dict[str, Any]:
    failures = 0
    for _ in range(20):
        try:
            await stack.llm.chat("hi", model="srv/fail", max_tokens=100)
        except ServerError:
            failures += 1
        except CircuitOpenError:
            return {"failures": failures, "opened": True}
    return {"failures": failures, "opened": False}


async def _breaker_check(stack: Stack) -> dict[str, Any]:
    try:
        await stack.llm.chat("hi", model="srv/m", max_tokens=100)
    except CircuitOpenError as exc:
        return {"circuit_open": True, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        return {"circuit_open": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"circuit_open": False, "error": None}


async def main(settings_path: str) -> None:
    settings = json.loads(Path(settings_path).read_text())
    folder = Path(settings["folder"])
    index = settings["index"]
    stack = Stack(discover=True, config=settings["config"])
    async with stack:
        assert await stack.llm.shared_limits() is not None, "limits.shared is not in effect"
        (folder / f"ready-{index}").write_text("ready")
        await _wait_for(folder / "go", 120.0)
        mode = settings["mode"]
        if mode == "calls":
            result = await _calls(stack, settings["calls"])
        elif mode == "hang":
            result = {"answer": str(await stack.llm.chat("hi", model="srv/slow",
                                                         max_tokens=100))}
        elif mode == "open-breaker":
            result = await _open_breaker(stack)
        else:
            result = await _breaker_check(stack)
    (folder / f"result-{index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
