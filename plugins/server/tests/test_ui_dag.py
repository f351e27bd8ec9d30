"""The run page's DAG (flowyard_server.ui.dag): layering, ordering, routing, escaping, size."""

from __future__ import annotations

import itertools
import random
import re
import threading
import time
import xml.etree.ElementTree as ET

import markupsafe
import pytest
from flowyard_server.ui import dag
from flowyard_server.ui.dag import DagNode, layout_dag, render_dag_svg

SVG = "{http://www.w3.org/2000/svg}"


def n(node_id: str, *deps: str, uses: str = "echo", state: str = "pending",
      keys: int = 1) -> DagNode:
    return DagNode(id=node_id, uses=uses, depends_on=deps, state=state, keys=keys)


def parse(svg: markupsafe.Markup) -> ET.Element:
    """The SVG as XML: it must be well-formed whatever the ids hold."""
    return ET.fromstring(str(svg))


def layer_of(layout: dag.DagLayout) -> dict[str, int]:
    return {node_id: i for i, layer in enumerate(layout.layers) for node_id in layer}


def crossings(layers: list[list[str]], edges: list[tuple[str, str]]) -> int:
    """Crossings of the edges between adjacent layers for the given order of each layer."""
    index = {node_id: i for layer in layers for i, node_id in enumerate(layer)}
    layer = {node_id: li for li, nodes in enumerate(layers) for node_id in nodes}
    by_gap: dict[int, list[tuple[int, int]]] = {}
    for src, dst in edges:
        if layer[dst] == layer[src] + 1:
            by_gap.setdefault(layer[src], []).append((index[src], index[dst]))
    count = 0
    for pairs in by_gap.values():
        for i, (a1, b1) in enumerate(pairs):
            for a2, b2 in pairs[i + 1:]:
                count += (a1 - a2) * (b1 - b2) < 0
    return count


def random_layered(count: int, seed: int = 3, width: int = 50) -> list[DagNode]:
    rng = random.Random(seed)
    rows: list[list[str]] = []
    nodes = []
    for i in range(count):
        if i % width == 0:
            rows.append([])
        deps = []
        if len(rows) > 1:
            for _ in range(rng.choice([1, 2, 2, 3])):
                back = rng.choice([1, 1, 1, 2])
                deps.append(rng.choice(rows[max(0, len(rows) - 1 - back)]))
        node_id = f"step_{i:04d}"
        rows[-1].append(node_id)
        nodes.append(n(node_id, *deps, uses="llm.chat", state="completed"))
    random.Random(seed + 1).shuffle(nodes)
    return nodes


# -- layering -------------------------------------------------------------------------------


def test_longest_path_layering() -> None:
    nodes = [n("d", "b", "c"), n("c", "a", "b"), n("b", "a"), n("a"), n("e")]
    layout = layout_dag(nodes)
    assert layer_of(layout) == {"a": 0, "e": 0, "b": 1, "c": 2, "d": 3}
    # every dependency sits in a layer above its step
    for src, dst in layout.edges:
        assert layout.positions[src][1] < layout.positions[dst][1]


def test_unknown_and_repeated_dependencies_and_ids_are_ignored() -> None:
    nodes = [n("a"), n("b", "a", "a", "ghost"), n("a", "b", uses="second")]
    layout = layout_dag(nodes)
    assert layout.edges == (("a", "b"),)
    assert layout.layers == (("a",), ("b",))
    root = parse(render_dag_svg(nodes))
    assert len(root.findall(f".//{SVG}g[@class='node']")) == 2
    assert "ghost" not in str(render_dag_svg(nodes))
    assert "second" not in str(render_dag_svg(nodes))


def test_depends_on_is_a_tuple_even_from_a_list() -> None:
    node = DagNode(id="b", uses="echo", depends_on=["a"], state="pending")  # type: ignore[arg-type]
    assert node.depends_on == ("a",)


def _within(seconds: float, fn):  # type: ignore[no-untyped-def]
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"did not return within {seconds} s"
    return result[0]


def test_a_cycle_is_broken_not_followed_forever() -> None:
    nodes = [n("a", "c"), n("b", "a"), n("c", "b"), n("d", "c"), n("self", "self")]
    layout = _within(5, lambda: layout_dag(nodes))
    assert set(layer_of(layout)) == {"a", "b", "c", "d", "self"}
    assert len(layout.back_edges) == 2  # one edge of the 3-cycle, and the self-loop
    assert ("self", "self") in layout.back_edges
    # the rest is layered as a DAG: every edge that was kept goes down
    layers = layer_of(layout)
    for src, dst in set(layout.edges) - layout.back_edges:
        assert layers[src] < layers[dst]
    root = parse(_within(5, lambda: render_dag_svg(nodes)))
    back = [p for p in root.iter(f"{SVG}path") if p.get("class") == "edge back"]
    assert len(back) == 2


def test_a_long_cycle_does_not_hang_nor_recurse() -> None:
    count = 3000  # deeper than Python's recursion limit
    nodes = [n(f"s{i}", f"s{(i - 1) % count}") for i in range(count)]
    layout = _within(10, lambda: layout_dag(nodes))
    assert len(layout.back_edges) == 1
    assert len(layout.layers) == count


# -- ordering -------------------------------------------------------------------------------


def test_barycenter_uncrosses_parallel_branches() -> None:
    # listed so that input order crosses every pair of branches
    nodes = [n("a1"), n("b1"), n("c1"), n("c2", "c1"), n("b2", "b1"), n("a2", "a1"),
             n("a3", "a2"), n("b3", "b2"), n("c3", "c2")]
    layout = layout_dag(nodes)
    before = [["a1", "b1", "c1"], ["c2", "b2", "a2"], ["a3", "b3", "c3"]]
    assert crossings(before, list(layout.edges)) == 6
    assert crossings([list(layer) for layer in layout.layers], list(layout.edges)) == 0
    # the order is also the drawing order: left to right
    for layer in layout.layers:
        xs = [layout.positions[node_id][0] for node_id in layer]
        assert xs == sorted(xs)


def test_barycenter_reduces_crossings_of_a_random_dag() -> None:
    nodes = random_layered(300, width=15)
    layout = layout_dag(nodes)
    layers = layer_of(layout)
    input_order: list[list[str]] = [[] for _ in layout.layers]
    for node in nodes:
        input_order[layers[node.id]].append(node.id)
    before = crossings(input_order, list(layout.edges))
    after = crossings([list(layer) for layer in layout.layers], list(layout.edges))
    assert after < before * 0.75, (before, after)


# -- geometry -------------------------------------------------------------------------------


def test_wide_layers_wrap_onto_rows() -> None:
    nodes = [n("root"), *(n(f"m{i}", "root") for i in range(25)),
             n("join", *(f"m{i}" for i in range(25)))]
    layout = layout_dag(nodes)
    assert [len(layer) for layer in layout.layers] == [1, 25, 1]
    rows = sorted({layout.positions[f"m{i}"][1] for i in range(25)})
    assert len(rows) == 3
    assert layout.width <= dag.MAX_PER_ROW * (dag.NODE_W + dag.GAP_X) + 2 * dag.MARGIN
    assert layout.positions["join"][1] > rows[-1]
    # boxes never overlap
    boxes = sorted(layout.positions.values())
    assert len(set(boxes)) == len(boxes)
    for (x1, y1), (x2, y2) in itertools.pairwise(boxes):
        assert x1 != x2 or y2 - y1 >= dag.NODE_H


def _points(d: str) -> list[tuple[float, float, str]]:
    """End points of the path data dag.py writes (M, relative c and v), with the command."""
    tokens = re.findall(r"[MCcv]|-?\d+(?:\.\d+)?", d)
    points: list[tuple[float, float, str]] = []
    i = 0
    x = y = 0.0
    while i < len(tokens):
        cmd = tokens[i]
        if cmd == "M":
            x, y = float(tokens[i + 1]), float(tokens[i + 2])
            i += 3
        elif cmd == "c":
            x, y = x + float(tokens[i + 5]), y + float(tokens[i + 6])
            i += 7
        elif cmd == "v":
            y += float(tokens[i + 1])
            i += 2
        else:
            raise AssertionError(f"unexpected path command {cmd!r} in {d!r}")
        points.append((x, y, cmd))
    return points


def test_an_edge_skipping_a_layer_goes_around_the_box_in_its_way() -> None:
    nodes = [n("a"), n("b", "a"), n("c", "a", "b")]
    layout = layout_dag(nodes)
    bx, by = layout.positions["b"]
    assert layout.positions["a"][0] == bx == layout.positions["c"][0]  # one column
    root = parse(render_dag_svg(nodes))
    skip = next(p for p in root.iter(f"{SVG}path")
                if (p.get("data-from"), p.get("data-to")) == ("a", "c"))
    points = _points(skip.get("d", ""))
    verticals = [(x, y) for x, y, cmd in points if cmd == "v"]
    assert verticals, "the edge a -> c is not routed"
    x, y = verticals[0]
    assert y == by + dag.NODE_H  # passes the whole row of b...
    assert not bx <= x <= bx + dag.NODE_W  # ...beside b's box
    assert points[0][1] == layout.positions["a"][1] + dag.NODE_H
    assert points[-1][1] == layout.positions["c"][1]


def test_the_svg_has_the_contracted_structure() -> None:
    long_id = "a_really_long_step_identifier_of_forty_chars"
    nodes = [n("fetch", uses="web.fetch", state="completed"),
             n(long_id, "fetch", uses="llm.chat", state="running", keys=12)]
    svg = render_dag_svg(nodes)
    assert isinstance(svg, markupsafe.Markup)
    root = parse(svg)
    layout = layout_dag(nodes)
    assert root.tag == f"{SVG}svg" and root.get("id") == "dag"
    assert root.get("viewBox") == f"0 0 {layout.width} {layout.height}"
    assert (root.get("width"), root.get("height")) == (str(layout.width), str(layout.height))
    groups = {g.get("data-step"): g for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    assert set(groups) == {"fetch", long_id}
    g = groups[long_id]
    assert g.get("data-state") == "running"
    assert g.find(f"{SVG}rect") is not None
    title = g.findtext(f"{SVG}title") or ""
    assert long_id in title and "llm.chat" in title and "12 keys" in title
    label = g.findtext(f"{SVG}text") or ""
    assert len(label) == dag.LABEL_CHARS and label.endswith("\u2026")
    assert long_id.startswith(label[:-1])
    assert [t.text for t in g.iter(f"{SVG}text") if t.get("class") == "keys"] == ["\u00d712"]
    assert groups["fetch"].findtext(f"{SVG}text") == "fetch"
    edges = [p for p in root.iter(f"{SVG}path") if p.get("class") == "edge"]
    assert [(p.get("data-from"), p.get("data-to")) for p in edges] == [("fetch", long_id)]


def test_no_steps_is_still_an_svg() -> None:
    root = parse(render_dag_svg([]))
    assert root.get("id") == "dag" and root.get("viewBox")
    assert not [g for g in root.iter(f"{SVG}g") if g.get("class") == "node"]


# -- escaping -------------------------------------------------------------------------------

PAYLOADS = ["<script>alert(1)</script>", '"onmouseover="alert(1)', "x' onload='alert(1)",
            "a&b</text><script>alert(2)</script>", '"><img src=x onerror=alert(3)>']


def test_every_user_string_is_escaped() -> None:
    nodes = [n(PAYLOADS[0], uses=PAYLOADS[1], state=PAYLOADS[4])]
    nodes += [n(p, PAYLOADS[0], uses=PAYLOADS[0]) for p in PAYLOADS[1:]]
    svg = str(render_dag_svg(nodes))
    assert "<script" not in svg.lower() and "<img" not in svg.lower()
    root = parse(markupsafe.Markup(svg))  # well-formed: nothing broke out of its place
    allowed = {"class", "data-step", "data-state", "data-from", "data-to", "transform", "d",
               "x", "y", "width", "height", "rx", "id", "viewBox", "role", "aria-label",
               "refX", "refY", "markerWidth", "markerHeight", "orient"}
    for element in root.iter():
        assert set(element.attrib) <= allowed, element.attrib
        assert not any(name.startswith("on") for name in element.attrib)
        assert element.tag.split("}")[1] in {"svg", "defs", "marker", "path", "g", "title",
                                               "rect", "text", "clipPath"}
    # and the values round-trip: the browser sees the ids as they are
    groups = [g for g in root.iter(f"{SVG}g") if g.get("class") == "node"]
    assert [g.get("data-step") for g in groups] == PAYLOADS
    assert groups[0].get("data-state") == PAYLOADS[4]
    assert PAYLOADS[1] in (groups[0].findtext(f"{SVG}title") or "")
    froms = {p.get("data-from") for p in root.iter(f"{SVG}path") if p.get("data-from")}
    assert froms == {PAYLOADS[0]}


# -- scale ----------------------------------------------------------------------------------


def test_a_thousand_steps_render_fast_and_stay_small() -> None:
    nodes = random_layered(1000)
    layout = layout_dag(nodes)
    assert len(layout.edges) > 1800
    render_dag_svg(nodes)  # warm-up
    start = time.perf_counter()
    svg = render_dag_svg(nodes)
    elapsed = time.perf_counter() - start
    # about 20 ms on a laptop (benchmarks/dashboard_dag.py); generous for slow CI machines
    assert elapsed < 0.5, elapsed
    # ~470 KB with these 9-character ids (about 250 bytes a step, 120 an edge); gzip, which
    # the browser accepts, takes it to about a tenth
    assert len(str(svg).encode()) < 550_000
    root = parse(svg)
    assert len([g for g in root.iter(f"{SVG}g") if g.get("class") == "node"]) == 1000


@pytest.mark.parametrize("shape", ["chain", "fan"])
def test_a_thousand_step_chain_or_fan_out(shape: str) -> None:
    if shape == "chain":
        nodes = [n("s0")] + [n(f"s{i}", f"s{i - 1}") for i in range(1, 1000)]
    else:
        nodes = [n("root"), *(n(f"s{i}", "root") for i in range(998)),
                 n("join", *(f"s{i}" for i in range(998)))]
    layout = _within(5, lambda: layout_dag(nodes))
    assert len(layout.layers) == (1000 if shape == "chain" else 3)
    assert layout.width <= dag.MAX_PER_ROW * (dag.NODE_W + dag.GAP_X) + 2 * dag.MARGIN
    assert len(str(render_dag_svg(nodes)).encode()) < 450_000


@pytest.mark.parametrize("shape", ["fan", "random"])
def test_edges_crossing_rows_run_down_gaps_not_through_boxes(shape: str) -> None:
    if shape == "fan":
        nodes = [n("root"), *(n(f"m{i}", "root") for i in range(45)),
                 n("join", *(f"m{i}" for i in range(45)))]
    else:
        nodes = random_layered(300, width=15)
    layout = layout_dag(nodes)
    pitch = dag.NODE_W + dag.GAP_X
    # wrapped layers: every box is on one grid, so the gaps line up from top to bottom
    assert all((x - dag.MARGIN) % pitch == 0 for x, _ in layout.positions.values())
    boxes = list(layout.positions.values())
    root = parse(render_dag_svg(nodes))
    checked = 0
    for path in root.iter(f"{SVG}path"):
        if path.get("class") != "edge":
            continue
        points = _points(path.get("d", ""))
        for (_, y0, _), (x, y1, cmd) in itertools.pairwise(points):
            if cmd != "v":
                continue
            checked += 1
            hit = [(bx, by) for bx, by in boxes
                   if bx < x < bx + dag.NODE_W and by < y1 and by + dag.NODE_H > y0]
            assert not hit, (path.get("data-from"), path.get("data-to"), x, y0, y1, hit)
    assert checked > 40
