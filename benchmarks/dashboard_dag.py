"""Run-page DAG: layout and SVG rendering time of 1,000-step workflows (pure Python).

Target: ``render_dag_svg`` of 1,000 steps / ~2,000 dependencies well under 100 ms, and an SVG
of a few hundred KB at most.

Shapes (1,000 steps each; ids and actions like real workflows', states mixed):

* ``chain``: each step depends on the previous one (1,000 layers of 1);
* ``fan-out/in``: one root, 998 parallel steps depending on it, one join of all 998;
* ``random layered``: 20 layers of random width (~50 steps), each step depending on 1-3
  (mean 2) random steps of the one to three layers above (mostly the one just above),
  seeded.

Measured in this one run, milliseconds per call (median of ``--repeat``):

* ``layout``: :func:`flowyard_server.ui.dag.layout_dag` (layers, barycenter order, positions);
* ``render``: :func:`flowyard_server.ui.dag.render_dag_svg` (layout + edge routing + SVG);
* baseline ``json``: ``json.dumps`` of the same steps as dicts (what an API would send to a
  client-side renderer);
* baseline ``flat svg``: the same ``<g>/<rect>/<text>/<title>`` elements, escaped, on a grid
  by index: no layout and no edges.

The ratios ``render / json`` and ``render / flat svg`` show what the layout and the edges
cost on top of merely writing the nodes out.

Usage::

    .venv/bin/python benchmarks/dashboard_dag.py [--repeat 15] [--steps 1000] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import markupsafe
from flowyard_server.ui.dag import DagNode, layout_dag, render_dag_svg

ACTIONS = ["llm.chat", "http.get", "web.fetch", "python.run", "embed.texts", "vector.search",
           "files.write", "workflow.run"]
STATES = ["completed"] * 6 + ["running", "pending", "pending", "failed", "skipped",
                              "retrying", "cancelled"]


def _node(rng: random.Random, i: int, deps: list[str], prefix: str = "step") -> DagNode:
    return DagNode(id=f"{prefix}_{i:04d}_{rng.choice(['fetch', 'summarize', 'classify'])}",
                   uses=rng.choice(ACTIONS), depends_on=tuple(deps),
                   state=rng.choice(STATES), keys=rng.choice([1, 1, 1, 1, 3, 12]))


def chain(n: int, rng: random.Random) -> list[DagNode]:
    nodes: list[DagNode] = []
    for i in range(n):
        nodes.append(_node(rng, i, [nodes[-1].id] if nodes else []))
    return nodes


def fan(n: int, rng: random.Random) -> list[DagNode]:
    root = _node(rng, 0, [], "root")
    middle = [_node(rng, i, [root.id]) for i in range(1, n - 1)]
    join = _node(rng, n - 1, [m.id for m in middle], "join")
    return [root, *middle, join]


def layered(n: int, rng: random.Random, layers: int = 20) -> list[DagNode]:
    widths = [max(1, round(rng.gauss(n / layers, n / layers / 3))) for _ in range(layers)]
    widths[-1] += n - sum(widths)
    while widths[-1] < 1:  # keep every layer non-empty and the total exact
        i = max(range(layers - 1), key=widths.__getitem__)
        widths[i] -= 1
        widths[-1] += 1
    rows: list[list[DagNode]] = []
    i = 0
    for li, width in enumerate(widths):
        row = []
        for _ in range(width):
            deps: list[str] = []
            if li:
                for _ in range(rng.choice([1, 2, 2, 3])):
                    back = min(li, rng.choice([1, 1, 1, 1, 2, 3]))
                    deps.append(rng.choice(rows[li - back]).id)
            row.append(_node(rng, i, deps))
            i += 1
        rows.append(row)
    nodes = [node for row in rows for node in row]
    rng.shuffle(nodes)  # the workflow file need not list steps in layer order
    return nodes


def as_json(nodes: list[DagNode]) -> str:
    return json.dumps([{"id": n.id, "uses": n.uses, "depends_on": list(n.depends_on),
                        "state": n.state, "keys": n.keys} for n in nodes])


def flat_svg(nodes: list[DagNode]) -> str:
    escape = markupsafe.escape
    parts = ['<svg id="dag" xmlns="http://www.w3.org/2000/svg">']
    for i, node in enumerate(nodes):
        x, y = 16 + (i % 10) * 204, 16 + (i // 10) * 96
        parts.append(f'<g class="node" data-step="{escape(node.id)}" '
                     f'data-state="{escape(node.state)}" transform="translate({x} {y})">'
                     f'<title>{escape(node.id + chr(10) + node.uses)}</title>'
                     f'<rect width="180" height="40" rx="6"/>'
                     f'<text class="label" x="10" y="17">{escape(node.id[:24])}</text>'
                     f'<text class="uses" x="10" y="32">{escape(node.uses[:24])}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median milliseconds of ``repeat`` calls (after one warm-up call)."""
    fn()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1000)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    shapes = {"chain": chain(args.steps, rng), "fan-out/in": fan(args.steps, rng),
              "random layered": layered(args.steps, rng)}
    print(f"{'shape':<15} {'steps':>5} {'edges':>5} {'layers':>6} {'layout ms':>9} "
          f"{'render ms':>9} {'json ms':>7} {'flat ms':>7} {'x json':>7} {'x flat':>7} "
          f"{'SVG KB':>7} {'WxH px':>13}")
    for name, nodes in shapes.items():
        lay = layout_dag(nodes)
        svg = render_dag_svg(nodes)
        t_layout = timed(lambda nodes=nodes: layout_dag(nodes), args.repeat)
        t_render = timed(lambda nodes=nodes: render_dag_svg(nodes), args.repeat)
        t_json = timed(lambda nodes=nodes: as_json(nodes), args.repeat)
        t_flat = timed(lambda nodes=nodes: flat_svg(nodes), args.repeat)
        print(f"{name:<15} {len(nodes):>5} {len(lay.edges):>5} {len(lay.layers):>6} "
              f"{t_layout:>9.1f} {t_render:>9.1f} {t_json:>7.2f} {t_flat:>7.2f} "
              f"{t_render / t_json:>7.1f} {t_render / t_flat:>7.1f} "
              f"{len(svg.encode()) / 1024:>7.0f} {f'{lay.width}x{lay.height}':>13}")


if __name__ == "__main__":
    main()
