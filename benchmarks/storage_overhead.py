"""Engine runs on SQLite storage against in-memory storage, printed as ratios.

Three DAG shapes of the built-in no-op ``echo`` action, so the time measured is the engine's
scheduling plus the storage writes it makes per step key (attempt rows, checkpoint, event
batches, the run record):

- ``chain``: 50 steps, each depending on the previous one (every checkpoint is on the
  critical path);
- ``fan-out``: one step over 200 items (``for_each``, 200 step keys);
- ``layers``: 8 layers of 8 steps, each step depending on every step of the layer before.

Each DAG runs ``--runs`` times per backend in this process (after one warm-up run); the
median wall time is reported, and the ratio SQLite / memory. SQLite is measured with
``synchronous=FULL`` (the default: a commit survives power loss) and ``NORMAL`` (survives a
process crash only), on a file in a temporary directory.

Usage: .venv/bin/python benchmarks/storage_overhead.py [--runs 5] [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio


def chain(n: int = 50) -> dict[str, Any]:
    steps = [{"id": "s0", "uses": "echo", "with": {"value": 0}}]
    for i in range(1, n):
        steps.append({"id": f"s{i}", "uses": "echo",
                      "with": {"value": f"{{{{ steps.s{i - 1}.output }}}}"}})
    return {"name": "bench-chain", "steps": steps}


def fan_out(n: int = 200) -> dict[str, Any]:
    return {"name": "bench-fan-out", "max_concurrency": 32, "steps": [
        {"id": "each", "uses": "echo", "for_each": list(range(n)),
         "with": {"value": "{{ item }}"}}]}


def layers(width: int = 8, depth: int = 8) -> dict[str, Any]:
    steps = []
    for layer in range(depth):
        for i in range(width):
            step: dict[str, Any] = {"id": f"l{layer}_{i}", "uses": "echo",
                                    "with": {"value": f"{layer}-{i}"}}
            if layer:
                step["depends_on"] = [f"l{layer - 1}_{j}" for j in range(width)]
            steps.append(step)
    return {"name": "bench-layers", "steps": steps}


DAGS = {"chain (50 steps)": (chain, 50), "fan-out (200 keys)": (fan_out, 200),
        "layers (8x8)": (layers, 64)}


async def measure(url: str, config: dict[str, Any], runs: int) -> dict[str, float]:
    import flowyard_sql.plugin
    from flowyard.stack import Stack

    stack = Stack([("sql", flowyard_sql.plugin)],
                  config={"storage": {"url": url, **config}})
    medians: dict[str, float] = {}
    async with stack:
        for label, (build, _keys) in DAGS.items():
            workflow = stack.load_workflow(build())
            await stack.run(workflow)  # warm-up
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                result = await stack.run(workflow)
                times.append(time.perf_counter() - started)
                assert result.status == "completed", result
            medians[label] = statistics.median(times)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "memory": ("memory://", {}),
            "sqlite FULL": (f"sqlite:///{Path(tmp) / 'full.db'}", {}),
            "sqlite NORMAL": (f"sqlite:///{Path(tmp) / 'normal.db'}",
                              {"sqlite": {"synchronous": "NORMAL"}}),
        }
        results = {name: anyio.run(measure, url, cfg, args.runs, backend=args.backend)
                   for name, (url, cfg) in cases.items()}
    base = results["memory"]
    print(f"engine DAG runs, median of {args.runs} ({args.backend}); ratio = backend / memory")
    header = f"{'DAG':<20}{'memory':>11}" + "".join(
        f"{name:>15}{'ratio':>7}{'ms/key':>8}" for name in cases if name != "memory")
    print(header)
    for label, (_build, keys) in DAGS.items():
        row = f"{label:<20}{base[label] * 1000:>9.1f}ms"
        for name in cases:
            if name == "memory":
                continue
            value = results[name][label]
            extra_ms = (value - base[label]) * 1000 / keys
            row += f"{value * 1000:>13.1f}ms{value / base[label]:>6.1f}x{extra_ms:>8.2f}"
        print(row)
    print("ms/key: extra wall time per step key over in-memory storage")


if __name__ == "__main__":
    main()
