"""A 1,000-item fan-out on Ray: flowyard's ray executor against plain Ray tasks, and the local
executor for reference.

Target (issue 24): flowyard on Ray takes at most 1.5x the time of plain Ray tasks doing the
same work.

The same DAG everywhere: ``root`` -> ``N`` items -> ``join``; each item receives the root's
output and its index and does a little work (:func:`work`: a sum over 2,000 integers, about
30 µs), the join sums the items' outputs.

* ``plain Ray``: ``ray.remote(work)``: the root task, N tasks given the root's ``ObjectRef``
  (so Ray passes the value), the join task given the N refs; one ``ray.get``;
* ``flowyard ray``: a workflow with ``for_each`` over N items, every step on the ``ray``
  executor (a ``@flowyard.tool`` from this module, registered by its ``register_tools``;
  the workers import this module through ``[ray] plugins``), storage ``memory://``;
* ``flowyard local``: the same workflow on the local executor (no Ray).

Every system runs once to warm up (worker processes started, stacks built), then
``--repeat`` times; the median wall time is reported, with the ratio to plain Ray.

Without ``--address``, the script starts a two-node local cluster with ``ray start`` (one
CPU per node; ``flowyard_ray.testing.LocalCluster``) and stops it at the end.

Usage::

    .venv/bin/python benchmarks/ray_fanout.py [--items 1000] [--repeat 3]
        [--address HOST:PORT] [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import flowyard

HERE = os.path.dirname(os.path.abspath(__file__))


def work(base: int, x: int) -> int:
    """A little CPU work: ``base + x + sum(range(2000)) % 7``."""
    return base + x + sum(range(2000)) % 7


@flowyard.tool(name="bench.work")
async def work_tool(base: int, x: int) -> int:
    """Return :func:`work` of ``base`` and ``x``.

    Args:
        base: the root's output.
        x: the item.
    """
    return work(base, x)


@flowyard.tool(name="bench.join")
async def join_tool(values: list[int]) -> int:
    """Return the sum of ``values``.

    Args:
        values: the items' outputs.
    """
    return sum(values)


@flowyard.hookimpl
def register_tools(register: flowyard.Register, config: flowyard.Config) -> None:
    """Register ``bench.work`` and ``bench.join``."""
    register("bench.work", work_tool)
    register("bench.join", join_tool)


def workflow(items: int, executor: str) -> dict[str, Any]:
    """The fan-out workflow of ``items`` items on ``executor``."""
    return {"name": f"ray-fanout-{items}", "steps": [
        {"id": "root", "uses": "bench.work", "executor": executor, "with": {"base": 1, "x": 0}},
        {"id": "fan", "uses": "bench.work", "executor": executor,
         "for_each": list(range(items)), "with": {"base": "${root}", "x": "{{ item }}"}},
        {"id": "join", "uses": "bench.join", "executor": executor,
         "with": {"values": "${fan}"}},
    ], "outputs": {"total": "${join}"}}


def expected(items: int) -> int:
    """The join's value for ``items`` items."""
    base = work(1, 0)
    return sum(work(base, x) for x in range(items))


def plain_ray(items: int) -> tuple[float, int]:
    """Run the fan-out as plain Ray tasks; return (seconds, total)."""
    import ray

    remote_work = ray.remote(work)

    @ray.remote
    def join(*values: int) -> int:
        return sum(values)

    started = time.perf_counter()
    root = remote_work.remote(1, 0)
    refs = [remote_work.remote(root, x) for x in range(items)]
    total = ray.get(join.remote(*refs))
    return time.perf_counter() - started, total


async def flowyard_run(stack: flowyard.Stack, items: int, executor: str) -> tuple[float, int]:
    """Run the fan-out workflow on ``stack``; return (seconds, total)."""
    wf = stack.load_workflow(workflow(items, executor))
    started = time.perf_counter()
    result = await stack.run(wf, {}, max_concurrency=items)
    elapsed = time.perf_counter() - started
    if result.status != "completed":
        raise RuntimeError(f"{executor}: run {result.status}: {result.error}")
    return elapsed, int(result.outputs["total"])


def main() -> None:
    """Parse the arguments, run every system and print the table."""
    import anyio
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--address", default=None)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()

    cluster = None
    address = args.address
    env = {"PYTHONPATH": os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)}
    if address is None:
        from flowyard_ray.testing import LocalCluster

        print("starting a two-node local Ray cluster (ray start)...", flush=True)
        cluster = LocalCluster(nodes=2, num_cpus=1, env=env).start()
        address = cluster.address
    try:
        ray.init(address=address, namespace="flowyard-bench", log_to_driver=False,
                 runtime_env={"env_vars": env}, configure_logging=False)
        want = expected(args.items)
        config = {"storage": {"url": "memory://"},
                  "plugins": {"enabled": ["builtin", "ray", "ray_fanout"]},
                  "ray": {"address": address, "plugins": ["ray_fanout"],
                          "namespace": "flowyard-bench"}}
        module = sys.modules[__name__]
        stack = flowyard.Stack([("ray_fanout", module)], config=config, discover=True)
        times: dict[str, list[float]] = {"plain Ray": [], "flowyard ray": [],
                                         "flowyard local": []}

        async def flowyard_all() -> None:
            await stack.open()
            for name, executor in (("flowyard ray", "ray"), ("flowyard local", "local")):
                await flowyard_run(stack, 10, executor)  # warm-up
                for _ in range(args.repeat):
                    elapsed, total = await flowyard_run(stack, args.items, executor)
                    assert total == want, (name, total, want)
                    times[name].append(elapsed)
            await stack.aclose()

        plain_ray(10)  # warm-up
        for _ in range(args.repeat):
            elapsed, total = plain_ray(args.items)
            assert total == want, ("plain Ray", total, want)
            times["plain Ray"].append(elapsed)
        anyio.run(flowyard_all, backend=args.backend)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.stop()

    base = statistics.median(times["plain Ray"])
    print(f"\n{args.items}-item fan-out on a {'two-node local' if cluster else 'given'} Ray "
          f"cluster, median of {args.repeat} ({args.backend})")
    print(f"{'system':<16} {'seconds':>9} {'ms/item':>9} {'x plain Ray':>12}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<16} {median:>9.3f} {1000 * median / args.items:>9.3f} "
              f"{median / base:>12.2f}")
    ratio = statistics.median(times["flowyard ray"]) / base
    print(f"\nflowyard on Ray / plain Ray: {ratio:.2f} (target <= 1.5): "
          f"{'met' if ratio <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
