"""Engine overhead per step with OpenTelemetry tracing on vs off (issue 23, item 5).

Target: tracing on (flowyard-otel's listener, a ``BatchSpanProcessor``) costs at most 1.3x
the engine's per-step time with tracing off.

The user's path, as ``benchmarks/dag_overhead.py``'s realistic shape: a dict workflow whose
steps call a ``@flowyard.tool`` (``bench.words``, registered by a plugin's ``register_tools``
hook) that does a little real work on data from its predecessors (``with: {inputs:
["${parent}", ...]}``: it merges their word lists and counts them), ``await stack.run(...)``
on memory storage with a listener on the event bus. Shapes: ``chain 500``, ``fan-out 1000``
(1 -> 1000 -> 1) and ``10x50 layers``.

* **off**: the stack as above;
* **on**: the same stack plus the listener the plugin builds
  (:func:`flowyard_otel.plugin.build_tracer`: a ``BatchSpanProcessor`` with the plugin's
  queue and batch sizes) exporting to an
  exporter that counts the spans and drops them (the network is not part of the engine's
  overhead). The timed region ends after ``force_flush()``: the batch processor's export
  work is counted, not left in the background.

Both run in this one process, alternating, ``--repeat`` times each; the medians of wall time
per step are reported with their ratio (and the ratio of the process's CPU time, the batch
processor's thread included). The spans exported per run (run + step + attempt +
tool-call spans) are checked, so no span is dropped silently.

Usage::

    .venv/bin/python benchmarks/otel_overhead.py [--repeat 5] [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Sequence
from typing import Any

Dag = dict[str, list[str]]


def chain(length: int) -> Dag:
    return {f"s{i}": ([f"s{i - 1}"] if i else []) for i in range(length)}


def fanout(width: int) -> Dag:
    dag: Dag = {"root": []}
    for i in range(width):
        dag[f"n{i}"] = ["root"]
    dag["join"] = [f"n{i}" for i in range(width)]
    return dag


def layers(depth: int, width: int) -> Dag:
    dag: Dag = {}
    for d in range(depth):
        for w in range(width):
            dag[f"l{d}_{w}"] = ([] if d == 0 else
                                [f"l{d - 1}_{w}", f"l{d - 1}_{(w + 1) % width}"])
    return dag


def _plugin() -> Any:
    import flowyard

    @flowyard.tool(name="bench.words", idempotent=True)
    async def words(inputs: list, text: str = "alpha beta gamma") -> dict:  # type: ignore[type-arg]
        """Merge the predecessors' word lists with ``text``'s words and count them.

        Args:
            inputs: the predecessors' outputs (``{"words": [...], "count": n}``).
            text: words of this step.

        Returns:
            ``{"words": the last 8 words, "count": how many were merged}``.
        """
        merged = text.split()
        for item in inputs:
            merged.extend(item["words"])
        return {"words": merged[-8:], "count": len(merged)}

    class Tools:
        @flowyard.hookimpl
        def register_tools(self, register: Any, config: Any) -> None:
            register("bench.words", words)

    return Tools()


def _workflow(name: str, dag: Dag) -> dict[str, Any]:
    return {"name": name, "steps": [
        {"id": node, "uses": "bench.words",
         "with": {"inputs": [f"${{{p}}}" for p in parents], "text": f"{node} word data"}}
        for node, parents in dag.items()]}


class CountingExporter:
    """A span exporter that counts what it is given and drops it."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[Any]) -> Any:
        """Count ``spans``.

        Args:
            spans: the batch.

        Returns:
            ``SpanExportResult.SUCCESS``.
        """
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.count += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered here.

        Args:
            timeout_millis: unused.

        Returns:
            True.
        """
        return True


async def _measure(dags: dict[str, Dag], repeat: int) -> dict[str, dict[str, Any]]:
    import flowyard
    from flowyard import Stack
    from flowyard_otel.plugin import build_tracer

    results: dict[str, dict[str, Any]] = {}
    for shape, dag in dags.items():
        times: dict[str, list[float]] = {"off": [], "on": []}
        cpus: dict[str, list[float]] = {"off": [], "on": []}
        exported: list[int] = []
        for _ in range(repeat):
            for mode in ("off", "on"):
                stack = Stack([("bench", _plugin())], config={"storage": {"url": "memory://"}})
                events: list[int] = []
                stack.events.subscribe(events.append)
                tracer = exporter = None
                async with stack:
                    if mode == "on":
                        exporter = CountingExporter()
                        tracer = build_tracer(flowyard.Config({}), exporter=exporter)
                        stack.events.subscribe(tracer, name="otel")
                    workflow = stack.load_workflow(_workflow(shape, dag))
                    gc.collect()
                    started, cpu = time.perf_counter(), time.process_time()
                    result = await stack.run(workflow, {})
                    if tracer is not None:
                        tracer.processor.force_flush()
                    elapsed = time.perf_counter() - started
                    cpu = time.process_time() - cpu
                    assert result.ok, result.error
                    if tracer is not None:
                        await tracer.aclose()
                        exported.append(exporter.count)  # type: ignore[union-attr]
                times[mode].append(elapsed / len(dag) * 1e6)
                cpus[mode].append(cpu / len(dag) * 1e6)
        off, on = statistics.median(times["off"]), statistics.median(times["on"])
        cpu_off, cpu_on = statistics.median(cpus["off"]), statistics.median(cpus["on"])
        results[shape] = {"steps": len(dag), "off_us": off, "on_us": on, "ratio": on / off,
                          "cpu_ratio": cpu_on / cpu_off,
                          "spans": exported, "expected_spans": 1 + 3 * len(dag)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args()
    import anyio

    dags = {"chain 500": chain(500), "fan-out 1000": fanout(1000),
            "10x50 layers": layers(10, 50)}
    results = anyio.run(_measure, dags, args.repeat, backend=args.backend)
    print(f"per-step wall time, median of {args.repeat} ({args.backend}); tracing on = "
          f"flowyard-otel + BatchSpanProcessor (flushed inside the timed region)")
    print(f"{'shape':<14} {'steps':>6} {'off µs':>9} {'on µs':>9} {'ratio':>7} {'cpu':>7}"
          f"  spans/run")
    worst = 0.0
    for shape, row in results.items():
        worst = max(worst, row["ratio"])
        spans = ", ".join(str(n) for n in sorted(set(row["spans"])))
        print(f"{shape:<14} {row['steps']:>6} {row['off_us']:>9.1f} {row['on_us']:>9.1f} "
              f"{row['ratio']:>6.2f}x {row['cpu_ratio']:>6.2f}x  {spans} "
              f"(expected {row['expected_spans']})")
    print(f"worst ratio {worst:.2f}x (target <= 1.30x): {'OK' if worst <= 1.3 else 'OVER'}")


if __name__ == "__main__":
    main()
