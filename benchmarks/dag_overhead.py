"""Scheduling overhead of the flowyard engine against a minimal hand-written anyio scheduler.

Both run the same DAGs of no-op steps:

* ``fanout``: 1 → 5000 → 1 (one root, 5000 parallel children, one join);
* ``chain``: 1000 steps, each depending on the previous one;
* ``layers``: 20 layers of 50 steps, each step depending on two steps of the layer above.

The hand-written scheduler is one task per step in one task group: wait for the parents'
``anyio.Event``, take a slot of an ``anyio.CapacityLimiter`` of the same size as the engine's
concurrency limit, call the no-op action, set its own event. The engine runs the same DAG as a
workflow of ``echo`` steps with events on and the in-memory storage (every attempt, checkpoint
and event is stored). Validation is timed separately (it happens once per load).

Usage::

    python benchmarks/dag_overhead.py [--backend asyncio|trio] [--repeat 3] [--limit 64]

Prints, per DAG, microseconds per step for both (wall clock and process CPU time, medians of
the repeats) and the ratios engine / hand-written (the target is within 3x). On a shared,
loaded machine the CPU-time ratio is the steadier figure.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import anyio
from flowyard.stack import Stack

Dag = dict[str, list[str]]


def fanout(width: int = 5000) -> Dag:
    dag: Dag = {"root": []}
    for i in range(width):
        dag[f"n{i}"] = ["root"]
    dag["join"] = [f"n{i}" for i in range(width)]
    return dag


def chain(length: int = 1000) -> Dag:
    return {f"s{i}": ([f"s{i - 1}"] if i else []) for i in range(length)}


def layers(depth: int = 20, width: int = 50) -> Dag:
    dag: Dag = {}
    for d in range(depth):
        for w in range(width):
            parents = [] if d == 0 else [f"l{d - 1}_{w}", f"l{d - 1}_{(w + 1) % width}"]
            dag[f"l{d}_{w}"] = parents
    return dag


async def noop(value: Any = None) -> Any:
    """The action of every hand-written step."""
    return value


async def hand_written(dag: Dag, limit: int) -> dict[str, Any]:
    """The minimal anyio scheduler: one task per step, events for dependencies."""
    done = {name: anyio.Event() for name in dag}
    limiter = anyio.CapacityLimiter(limit)
    results: dict[str, Any] = {}

    async def run(name: str) -> None:
        for parent in dag[name]:
            await done[parent].wait()
        async with limiter:
            results[name] = await noop(None)
        done[name].set()

    async with anyio.create_task_group() as tg:
        for name in dag:
            tg.start_soon(run, name)
    return results


def as_workflow(name: str, dag: Dag) -> dict[str, Any]:
    return {"name": name, "steps": [{"id": node, "uses": "echo", "depends_on": parents}
                                    for node, parents in dag.items()]}


async def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Return (wall seconds, process CPU seconds) of ``await fn()``."""
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    await fn()
    return time.perf_counter() - started, time.process_time() - cpu


async def _engine_run(stack: Stack, workflow: Any, limit: int, out: list[Any]) -> None:
    out.append(await stack.run(workflow, max_concurrency=limit))


async def measure(repeat: int, limit: int) -> list[dict[str, Any]]:
    rows = []
    for name, dag in (("fanout 1->5000->1", fanout()), ("chain 1000", chain()),
                      ("layers 20x50 (2 parents)", layers())):
        steps = len(dag)
        stack = Stack(config={"storage": {"url": "memory://"}})
        events: list[Any] = []
        stack.events.subscribe(events.append)  # events on: a listener sees every one
        async with stack:
            started = time.perf_counter()
            workflow = stack.load_workflow(as_workflow(name, dag))
            validate_s = time.perf_counter() - started
            engine_times, base_times = [], []
            for _ in range(repeat):
                base_times.append(await timed(functools.partial(hand_written, dag, limit)))
                result: list[Any] = []
                engine_times.append(await timed(functools.partial(
                    _engine_run, stack, workflow, limit, result)))
                assert result[0].ok, result[0].error
                stored = await stack.storage.list_events(result[0].run_id, limit=100_000)
                assert len(stored) >= 2 * steps
        base = statistics.median(t[0] for t in base_times)
        eng = statistics.median(t[0] for t in engine_times)
        base_cpu = statistics.median(t[1] for t in base_times)
        eng_cpu = statistics.median(t[1] for t in engine_times)
        rows.append({"dag": name, "steps": steps, "hand_us": base / steps * 1e6,
                     "engine_us": eng / steps * 1e6, "ratio": eng / base,
                     "hand_cpu_us": base_cpu / steps * 1e6,
                     "engine_cpu_us": eng_cpu / steps * 1e6, "cpu_ratio": eng_cpu / base_cpu,
                     "validate_us": validate_s / steps * 1e6,
                     "events_per_run": len(events) // repeat})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--limit", type=int, default=64,
                        help="concurrency limit of both schedulers")
    args = parser.parse_args()
    rows = anyio.run(measure, args.repeat, args.limit, backend=args.backend)
    print(f"backend={args.backend} limit={args.limit} repeat={args.repeat} (medians; wall "
          "clock and process CPU time)")
    print(f"{'DAG':26} {'steps':>5} {'hand µs/step':>12} {'engine µs/step':>14} {'ratio':>6}"
          f" {'hand cpu':>9} {'engine cpu':>10} {'cpu ratio':>9} {'validate µs/step':>16}"
          f" {'events/run':>10}")
    for r in rows:
        print(f"{r['dag']:26} {r['steps']:>5} {r['hand_us']:>12.1f} {r['engine_us']:>14.1f} "
              f"{r['ratio']:>5.2f}x {r['hand_cpu_us']:>9.1f} {r['engine_cpu_us']:>10.1f} "
              f"{r['cpu_ratio']:>8.2f}x {r['validate_us']:>16.1f} {r['events_per_run']:>10}")


if __name__ == "__main__":
    main()
