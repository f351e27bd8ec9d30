"""The engine benchmark's DAGs on SQLite storage against in-memory storage, printed as ratios.

The DAGs are those of ``benchmarks/dag_overhead.py`` (imported from it): ``fanout``
1 → 5000 → 1, ``chain`` of 1000 steps, ``layers`` 20 x 50 with two parents per step, all of
the built-in no-op ``echo`` action. So the difference measured is what the storage writes cost
the engine per step key (two attempt rows, one checkpoint, its share of the event batches, the
run record).

Each DAG runs ``--repeat`` times per storage in this process (after one warm-up run); the
median wall time is reported per step, with the ratio storage / memory. SQLite is measured on
a file in a temporary directory with ``synchronous=FULL`` (the default: a commit survives a
power cut) and ``NORMAL`` (survives a process crash only). ``--scale 0.2`` shrinks every DAG
for a quick look.

Usage: .venv/bin/python benchmarks/storage_overhead.py [--repeat 3] [--scale 1.0]
       [--backend asyncio|trio] [--limit 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio


def _dag_module() -> Any:
    path = Path(__file__).with_name("dag_overhead.py")
    spec = importlib.util.spec_from_file_location("dag_overhead", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules["dag_overhead"] = module
    spec.loader.exec_module(module)
    return module


def dags(scale: float) -> dict[str, dict[str, list[str]]]:
    """The engine benchmark's DAGs, sizes multiplied by ``scale``."""
    d = _dag_module()
    width = max(1, round(5000 * scale))
    length = max(1, round(1000 * scale))
    depth = max(1, round(20 * scale))
    return {f"fanout 1->{width}->1": d.fanout(width), f"chain {length}": d.chain(length),
            f"layers {depth}x50 (2 parents)": d.layers(depth, 50)}


async def measure(url: str, config: dict[str, Any], graphs: dict[str, Any], repeat: int,
                  limit: int) -> dict[str, tuple[float, float]]:
    """Return ``{dag: (median wall seconds, median CPU seconds)}`` of engine runs."""
    import flowyard_sql.plugin
    from flowyard.stack import Stack

    as_workflow = _dag_module().as_workflow
    stack = Stack([("sql", flowyard_sql.plugin)], config={"storage": {"url": url, **config}})
    out: dict[str, tuple[float, float]] = {}
    async with stack:
        for name, dag in graphs.items():
            workflow = stack.load_workflow(as_workflow(name, dag))
            await stack.run(workflow, max_concurrency=limit)  # warm-up
            walls, cpus = [], []
            for _ in range(repeat):
                started, cpu = time.perf_counter(), time.process_time()
                result = await stack.run(workflow, max_concurrency=limit)
                walls.append(time.perf_counter() - started)
                cpus.append(time.process_time() - cpu)
                assert result.status == "completed", result.error
                assert len(await stack.storage.load_checkpoints(result.run_id)) == len(dag)
            out[name] = (statistics.median(walls), statistics.median(cpus))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--limit", type=int, default=64, help="engine max_concurrency")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    graphs = dags(args.scale)
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "memory": ("memory://", {}),
            "sqlite FULL": (f"sqlite:///{Path(tmp) / 'full.db'}", {}),
            "sqlite NORMAL": (f"sqlite:///{Path(tmp) / 'normal.db'}",
                              {"sqlite": {"synchronous": "NORMAL"}}),
        }
        results = {name: anyio.run(measure, url, cfg, graphs, args.repeat, args.limit,
                                   backend=args.backend)
                   for name, (url, cfg) in cases.items()}
    base = results["memory"]
    print(f"engine DAGs of dag_overhead.py, {args.backend}, max_concurrency={args.limit}, "
          f"median of {args.repeat}; µs per step (wall), ratio = storage / memory")
    others = [name for name in cases if name != "memory"]
    print(f"{'DAG':28}{'steps':>6}{'memory':>9}" + "".join(
        f"{name:>15}{'ratio':>7}{'cpu ratio':>10}" for name in others))
    for name, dag in graphs.items():
        steps = len(dag)
        wall0, cpu0 = base[name]
        row = f"{name:28}{steps:>6}{wall0 / steps * 1e6:>9.0f}"
        for other in others:
            wall, cpu = results[other][name]
            row += f"{wall / steps * 1e6:>15.0f}{wall / wall0:>6.1f}x{cpu / cpu0:>9.1f}x"
        print(row)


if __name__ == "__main__":
    main()
