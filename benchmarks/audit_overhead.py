"""What the audit log costs a run: a 200-step workflow with and without the ``audit``
listener, printed as a ratio.

Every step is a tool call (the built-in ``echo`` action), so every step adds one audit record
(``tool.call``): the worst case for the log's volume. Two shapes: a ``chain`` of 200 steps
(one after another) and a ``fanout`` 1 -> 198 -> 1 (steps run side by side, up to ``--limit``
at once). Storage: an in-memory store and a SQLite file (``synchronous=FULL``, the default).

Each shape runs ``--repeat`` times per setting in this process after one warm-up round, the
two settings alternating (two stacks on the same storage; memory stores are per stack); the
median wall time of a run is reported, with the ratio audit / no audit. The time of a run
includes the appends that completed while it ran; ``flush`` is the extra time to write what
was still buffered when the run returned (records are appended off the step path, in
batches, by a background task), reported separately, and ``+flush`` is the ratio with it
(the whole cost, as a run followed at once by ``flush`` pays it).

Usage: .venv/bin/python benchmarks/audit_overhead.py [--repeat 5] [--steps 200]
       [--limit 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio


def chain(n: int) -> dict[str, Any]:
    """``n`` echo steps, each depending on the one before."""
    steps = [{"id": "s0", "uses": "echo", "with": {"value": 0}}]
    steps += [{"id": f"s{i}", "uses": "echo", "with": {"value": i}, "depends_on": [f"s{i - 1}"]}
              for i in range(1, n)]
    return {"name": "audit-chain", "steps": steps}


def fanout(n: int) -> dict[str, Any]:
    """1 -> n - 2 -> 1 echo steps."""
    middle = [f"m{i}" for i in range(n - 2)]
    steps = [{"id": "start", "uses": "echo", "with": {"value": 0}}]
    steps += [{"id": m, "uses": "echo", "with": {"value": m}, "depends_on": ["start"]}
              for m in middle]
    steps.append({"id": "end", "uses": "echo", "with": {"value": 1}, "depends_on": middle})
    return {"name": "audit-fanout", "steps": steps}


async def measure(url: str, workflow: dict[str, Any], *, repeat: int, limit: int
                  ) -> tuple[float, float, float, int]:
    """Run ``workflow`` on two stacks over ``url``, without and with the audit listener,
    alternately (so load from elsewhere on the machine hits both alike).

    Returns:
        (median run seconds without, with, median flush seconds, records written).
    """
    from flowyard import Stack

    plain_runs: list[float] = []
    audited_runs: list[float] = []
    flushes: list[float] = []
    async with Stack(config={"storage": {"url": url}, "audit": {"enabled": False}},
                     discover=True) as plain, \
            Stack(config={"storage": {"url": url}}, discover=True) as audited:
        listener = audited.listeners.get("audit")
        workflows = {id(plain): plain.load_workflow(workflow),
                     id(audited): audited.load_workflow(workflow)}
        for index in range(repeat + 1):
            for stack, runs in ((plain, plain_runs), (audited, audited_runs)):
                started = time.perf_counter()
                result = await stack.run(workflows[id(stack)], {}, max_concurrency=limit)
                ran = time.perf_counter() - started
                assert result.status == "completed", result.status
                if index:  # the first round warms up
                    runs.append(ran)
            started = time.perf_counter()
            await listener.flush()
            if index:
                flushes.append(time.perf_counter() - started)
        written = listener.written
    return (statistics.median(plain_runs), statistics.median(audited_runs),
            statistics.median(flushes), written)


async def main(args: argparse.Namespace) -> None:
    shapes = {f"chain {args.steps}": chain(args.steps),
              f"fanout 1->{args.steps - 2}->1": fanout(args.steps)}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'shape':<22} {'storage':<8} {'no audit':>10} {'audit':>10} {'ratio':>7} "
              f"{'flush':>8} {'+flush':>7} {'records':>8}")
        for number, (shape, workflow) in enumerate(shapes.items()):
            stores = {"memory": "memory://",
                      "sqlite": f"sqlite:///{Path(tmp) / f'runs-{number}.db'}"}
            for store, url in stores.items():
                plain, audited, flush, written = await measure(
                    url, workflow, repeat=args.repeat, limit=args.limit)
                print(f"{shape:<22} {store:<8} {plain * 1000:>8.1f}ms {audited * 1000:>8.1f}ms "
                      f"{audited / plain:>7.3f} {flush * 1000:>6.1f}ms "
                      f"{(audited + flush) / plain:>7.3f} {written:>8}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--limit", type=int, default=64)
    anyio.run(main, parser.parse_args())
