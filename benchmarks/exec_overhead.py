"""Start-up overhead of shell.run and python.run, against raw subprocesses in the same run.

Baselines: `anyio.run_process(["true"])` (a bare fork+exec) and
`anyio.run_process([python, "-c", "pass"])`. Measured: shell.run of `true` unsandboxed and
in bubblewrap, python.run of `result = 1` unsandboxed and in bubblewrap. Every figure is the
median wall time of N calls, printed in milliseconds and as a ratio to its baseline.

Usage: .venv/bin/python benchmarks/exec_overhead.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio


async def median_ms(call: Callable[[], Awaitable[Any]], runs: int) -> float:
    await call()  # warm-up (bubblewrap probe, page cache)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def main(runs: int) -> None:
    from flowyard.context import ToolContext
    from flowyard.stack import Stack
    from flowyard_exec import ExecSettings, PythonRunTool, ShellRunTool

    ctx = ToolContext(stack=Stack())
    # Unsandboxed runs keep the current account: the interpreter may be unreadable for nobody.
    plain = ExecSettings.from_section({"isolation": "none", "user": ""})
    boxed = ExecSettings.from_section({"isolation": "required"})
    rows: list[tuple[str, float, str, float]] = []

    base_true = await median_ms(lambda: anyio.run_process(["true"]), runs)
    base_py = await median_ms(lambda: anyio.run_process([sys.executable, "-c", "pass"]), runs)
    cases: list[tuple[str, Callable[[], Awaitable[Any]], str, float]] = [
        ("shell.run true (none)",
         lambda: ShellRunTool(plain).invoke({"command": ["true"]}, ctx), "true", base_true),
        ("shell.run true (bubblewrap)",
         lambda: ShellRunTool(boxed).invoke({"command": ["true"]}, ctx), "true", base_true),
        ("python.run result=1 (none)",
         lambda: PythonRunTool(plain).invoke({"code": "result = 1"}, ctx), "python -c pass",
         base_py),
        ("python.run result=1 (bubblewrap)",
         lambda: PythonRunTool(boxed).invoke({"code": "result = 1"}, ctx), "python -c pass",
         base_py),
    ]
    for name, call, base_name, base in cases:
        value = await median_ms(call, runs)
        rows.append((name, value, base_name, base))
    print(f"baseline  run_process(true):           {base_true:8.2f} ms")
    print(f"baseline  run_process(python -c pass): {base_py:8.2f} ms")
    for name, value, base_name, base in rows:
        print(f"{name:34s} {value:8.2f} ms  = {value / base:5.2f} x {base_name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    anyio.run(main, parser.parse_args().runs)
