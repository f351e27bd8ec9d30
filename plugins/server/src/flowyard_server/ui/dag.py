"""The run page's DAG: a layered top-down layout of a workflow's steps, drawn as SVG.

Layout (a small Sugiyama-style pass, linear in the number of steps and dependencies):

- **Layers.** Longest-path layering: a step without dependencies is in layer 0, any other in
  1 + the highest layer of its dependencies. Dependencies naming no listed step are ignored.
  Valid workflows have no cycles; should one come, the depth-first walk that computes the
  layers drops the edge closing it (drawn, with the class ``back``) instead of looping.
- **Order in a layer.** Input order, then four barycenter sweeps (down, up, down, up): each
  step moves to the mean rank of its neighbours in the layer swept from, which removes most
  edge crossings of the usual shapes (parallel branches, fan-out/fan-in).
- **Wide layers** wrap: a layer of more than :data:`MAX_PER_ROW` steps takes several rows, so
  a fan-out of 1,000 steps is tall rather than 200,000 pixels wide (the page puts the SVG in
  a scrolling container). Rows are then laid on one grid, so the gaps between boxes line up.
- **Edges** are curves from a port on the bottom of the dependency to one on the top of the
  step (ports spread by the other end's x). An edge crossing rows (it skips a layer, or
  leads into a wrapped layer) goes through the gaps instead of behind the boxes: around each
  box in its way when it crosses up to :data:`ROUTED_ROWS` rows, else straight down the gap
  beside its step.

The SVG carries no style and no script (the pages' Content-Security-Policy allows neither
inline): ``ui.css`` colours ``g.node[data-state=...]`` and ``run.js`` changes ``data-state``
as the run's events arrive. Every user-supplied string (step ids, actions) is escaped with
:func:`markupsafe.escape`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import markupsafe

__all__ = ["DagNode", "DagLayout", "layout_dag", "render_dag_svg", "STATES", "MAX_PER_ROW",
           "LABEL_CHARS", "ROUTED_ROWS"]

#: The states a node can show (``data-state``); ``ui.css`` has a colour for each.
STATES = ("pending", "running", "completed", "failed", "skipped", "cancelled", "retrying")
#: Most steps side by side in one row; wider layers wrap onto further rows.
MAX_PER_ROW = 10
#: Characters of a step id (or action) shown in a node; longer ones end with an ellipsis and
#: the node's ``<title>`` (its tooltip) has them in full.
LABEL_CHARS = 24

#: Geometry in pixels: box width and height, gaps between boxes and rows, outer margin.
NODE_W = 196
NODE_H = 40
GAP_X = 24
GAP_Y = 56
MARGIN = 16
_SWEEPS = 4
#: Edges crossing at most this many rows go around each box in their way; longer ones run
#: down the gap beside the step they lead to (a short path, also for huge graphs).
ROUTED_ROWS = 2


@attrs.frozen
class DagNode:
    """One step of a run, as the DAG shows it.

    Attributes:
        id: the step id (user-supplied).
        uses: the step's action (a tool name; user-supplied).
        depends_on: ids of the steps it depends on; ids naming no node are ignored.
        state: one of :data:`STATES`.
        keys: how many step keys (``for_each`` items) it ran.
    """

    id: str
    uses: str
    depends_on: tuple[str, ...] = attrs.field(converter=tuple)
    state: str
    keys: int = 1


@attrs.frozen
class DagLayout:
    """Where :func:`layout_dag` put each step.

    Attributes:
        layers: the step ids of each layer, in drawing order (left to right, row by row).
        positions: the top-left corner ``(x, y)`` of each step's box, in pixels.
        edges: the ``(dependency, step)`` pairs drawn, dependencies of each step in order.
        back_edges: the edges left out of the layering to break a cycle (empty for a valid
            workflow).
        width: the drawing's width in pixels.
        height: the drawing's height in pixels.
    """

    layers: tuple[tuple[str, ...], ...]
    positions: Mapping[str, tuple[int, int]]
    edges: tuple[tuple[str, str], ...]
    back_edges: frozenset[tuple[str, str]]
    width: int
    height: int


def _layers(ids: list[str], deps: dict[str, list[str]]
            ) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """Longest-path layer of each id, and the edges dropped to break cycles.

    An iterative depth-first walk over dependencies (a 1,000-step chain would overflow
    Python's recursion): an edge to a step still on the walk's stack closes a cycle and is
    dropped.
    """
    layer: dict[str, int] = {}
    back: set[tuple[str, str]] = set()
    on_stack: set[str] = set()
    for root in ids:
        if root in layer:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        on_stack.add(root)
        while stack:
            node, i = stack[-1]
            node_deps = deps[node]
            while i < len(node_deps):
                dep = node_deps[i]
                i += 1
                if dep in layer:
                    continue
                if dep in on_stack:
                    back.add((dep, node))
                    continue
                stack[-1] = (node, i)
                stack.append((dep, 0))
                on_stack.add(dep)
                break
            else:
                stack.pop()
                on_stack.discard(node)
                layer[node] = 1 + max((layer[d] for d in node_deps if (d, node) not in back),
                                      default=-1)
    return layer, back


def _order(rows: list[list[str]], up: dict[str, list[str]], down: dict[str, list[str]]
           ) -> None:
    """Reorder each layer in place by barycenter sweeps (see the module docstring)."""
    rank: dict[str, float] = {}

    def set_ranks(row: list[str]) -> None:
        n = len(row)
        for i, node in enumerate(row):
            rank[node] = (i + 0.5) / n

    for row in rows:
        set_ranks(row)
    for sweep in range(_SWEEPS):
        downward = sweep % 2 == 0
        neighbours = up if downward else down
        indices = range(1, len(rows)) if downward else range(len(rows) - 2, -1, -1)
        for li in indices:
            row = rows[li]
            keys: dict[str, float] = {}
            for node in row:
                near = neighbours[node]
                keys[node] = (sum(rank[n] for n in near) / len(near)) if near else rank[node]
            row.sort(key=keys.__getitem__)  # stable: ties keep their order
            set_ranks(row)


def _graph(nodes: Sequence[DagNode]) -> tuple[dict[str, DagNode], dict[str, list[str]]]:
    """The first node of each id and its known, distinct dependencies, in input order."""
    first: dict[str, DagNode] = {}
    for node in nodes:
        first.setdefault(node.id, node)
    deps: dict[str, list[str]] = {}
    for node_id, node in first.items():
        deps[node_id] = list(dict.fromkeys(d for d in node.depends_on if d in first))
    return first, deps


def layout_dag(nodes: Sequence[DagNode]) -> DagLayout:
    """Lay the steps out in layers, top down (see the module docstring).

    Args:
        nodes: the steps; a repeated id keeps its first node.

    Returns:
        The layout: layers, box positions, edges and size.
    """
    first, deps = _graph(nodes)
    return _layout(list(first), deps)[0]


@attrs.frozen
class _Grid:
    """The rows of a layout (a wrapped layer has several): ``(y, x of the first box, boxes)``
    each, and the row of each step.
    """

    rows: list[tuple[int, int, int]]
    row_of: dict[str, int]


def _layout(ids: list[str], deps: dict[str, list[str]]) -> tuple[DagLayout, _Grid]:
    layer, back = _layers(ids, deps)
    rows: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for node_id in ids:
        rows[layer[node_id]].append(node_id)
    up: dict[str, list[str]] = {node_id: [] for node_id in ids}
    down: dict[str, list[str]] = {node_id: [] for node_id in ids}
    edges: list[tuple[str, str]] = []
    for node_id in ids:
        for dep in deps[node_id]:
            edges.append((dep, node_id))
            if (dep, node_id) not in back:
                up[node_id].append(dep)
                down[dep].append(node_id)
    _order(rows, up, down)

    per_row = min(MAX_PER_ROW, max((len(r) for r in rows), default=0))
    width = 2 * MARGIN + max(per_row * NODE_W + (per_row - 1) * GAP_X, 0)
    positions: dict[str, tuple[int, int]] = {}
    grid = _Grid(rows=[], row_of={})
    # rows are centred; when a layer wraps, on a grid of whole boxes instead, so that the
    # gaps line up from top to bottom and the long edges running down them stay visible
    grid_aligned = per_row == MAX_PER_ROW and any(len(r) > MAX_PER_ROW for r in rows)
    y = MARGIN
    for row in rows:
        for start in range(0, len(row), MAX_PER_ROW):
            chunk = row[start:start + MAX_PER_ROW]
            if grid_aligned:
                x = MARGIN + (per_row - len(chunk)) // 2 * (NODE_W + GAP_X)
            else:
                x = (width - len(chunk) * NODE_W - (len(chunk) - 1) * GAP_X) // 2
            grid.rows.append((y, x, len(chunk)))
            for node_id in chunk:
                positions[node_id] = (x, y)
                grid.row_of[node_id] = len(grid.rows) - 1
                x += NODE_W + GAP_X
            y += NODE_H + GAP_Y
    height = y - GAP_Y + MARGIN if ids else 2 * MARGIN
    return DagLayout(layers=tuple(tuple(r) for r in rows), positions=positions,
                     edges=tuple(edges), back_edges=frozenset(back), width=width,
                     height=height), grid


def _short(text: str, chars: int = LABEL_CHARS) -> str:
    return text if len(text) <= chars else text[:chars - 1] + "\u2026"


def render_dag_svg(nodes: Sequence[DagNode]) -> markupsafe.Markup:
    """Return the ``<svg id="dag">`` element of the run's DAG (see the module docstring).

    Each step is a ``<g class="node" data-step="ID" data-state="STATE">`` holding a
    ``<title>`` (full id, action and key count), a ``<rect>``, the id as a ``<text>`` and
    the action as a ``<text class="uses">`` (both cut to :data:`LABEL_CHARS` characters)
    and, when it ran several keys, their count as ``<text class="keys">``. Each dependency is
    a ``<path class="edge" data-from="DEP" data-to="ID">`` (class ``edge back`` for an edge
    dropped to break a cycle), drawn under the boxes. Every user-supplied string is escaped.

    Args:
        nodes: the run's steps (a repeated id keeps its first node).

    Returns:
        The SVG element as markup, safe to put in a template unescaped.
    """
    first, deps = _graph(nodes)
    lay, grid = _layout(list(first), deps)
    pos = lay.positions
    escape = markupsafe.escape
    esc = {node_id: str(escape(node_id)) for node_id in first}
    # ports: a step's edges leave (enter) its box spread over the middle of its bottom (top)
    # edge, ordered by the other end's x, so that a fan-out is not one thick line
    outs: dict[str, list[tuple[str, str]]] = {node_id: [] for node_id in first}
    ins: dict[str, list[tuple[str, str]]] = {node_id: [] for node_id in first}
    for edge in lay.edges:
        outs[edge[0]].append(edge)
        ins[edge[1]].append(edge)
    start: dict[tuple[str, str], int] = {}
    end: dict[tuple[str, str], int] = {}
    for node_id in first:
        x = pos[node_id][0]
        _ports(x, sorted(outs[node_id], key=lambda e: pos[e[1]][0]), start)
        _ports(x, sorted(ins[node_id], key=lambda e: pos[e[0]][0]), end)

    w, h = lay.width, lay.height
    parts = [f'<svg id="dag" class="dag" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
             f'aria-label="Workflow steps: {len(first)}">'
             '<defs><marker id="dag-arrow" class="arrow" viewBox="0 0 8 8" refX="8" refY="4" '
             'markerWidth="7" markerHeight="7" orient="auto"><path d="M0 0L8 4L0 8z"/>'
             f'</marker><clipPath id="dag-clip"><rect x="4" width="{NODE_W - 8}" '
             f'height="{NODE_H}"/></clipPath></defs><g class="edges">']
    back = lay.back_edges
    for edge in lay.edges:
        src, dst = edge
        x1, y1 = start[edge], pos[src][1] + NODE_H
        x2, y2 = end[edge], pos[dst][1]
        first_row, last_row = grid.row_of[src] + 1, grid.row_of[dst]
        if 0 < last_row - first_row <= ROUTED_ROWS:
            d = _routed(x1, y1, x2, y2, grid.rows[first_row:last_row])
        elif last_row > first_row:
            # a long edge runs down the gap beside its step: long edges share a few lanes
            # instead of cutting across the drawing (and its path stays short)
            gx = pos[dst][0] - GAP_X // 2 if x1 < x2 else pos[dst][0] + NODE_W + GAP_X // 2
            top = grid.rows[first_row][0]
            bottom = grid.rows[last_row - 1][0] + NODE_H
            d = (f"M{x1} {y1}" + _s_curve(gx - x1, top - y1) + f"v{bottom - top}"
                 + _s_curve(x2 - gx, y2 - bottom))
        else:
            d = f"M{x1} {y1}" + _s_curve(x2 - x1, y2 - y1)
        parts.append(f'<path class="edge{" back" if edge in back else ""}" '
                     f'data-from="{esc[src]}" data-to="{esc[dst]}" d="{d}"/>')
    parts.append('</g><g class="nodes">')
    for node_id, node in first.items():
        x, y = pos[node_id]
        keys = int(node.keys)
        title = f"{node_id}\n{node.uses}" + (f"\n{keys} keys" if keys != 1 else "")
        parts.append(
            f'<g class="node" data-step="{esc[node_id]}" data-state="{escape(node.state)}" '
            f'transform="translate({x} {y})"><title>{escape(title)}</title>'
            f'<rect width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="10" y="17">{escape(_short(node_id))}</text>'
            f'<text class="uses" x="10" y="32">'
            f'{escape(_short(node.uses, LABEL_CHARS if keys == 1 else LABEL_CHARS - 6))}</text>'
            + (f'<text class="keys" x="{NODE_W - 8}" y="32">\u00d7{keys}</text>'
               if keys != 1 else "")
            + "</g>")
    parts.append("</g></svg>")
    return markupsafe.Markup("".join(parts))


def _routed(x1: int, y1: int, x2: int, y2: int, rows: list[tuple[int, int, int]]) -> str:
    """Path data of an edge crossing ``rows``: through the gap between boxes nearest its line
    wherever the line would cross a box (the boxes would hide it).
    """
    d = [f"M{x1} {y1}"]
    cx, cy = x1, y1
    down = 0  # a straight run down not yet written (one ``v`` for several rows)
    pitch = NODE_W + GAP_X
    for top, x0, count in rows:
        mid = top + NODE_H // 2
        at = cx + (x2 - cx) * (mid - cy - down) / (y2 - cy - down)
        slot, offset = divmod(at - x0, pitch)
        if not (0 <= slot < count and offset < NODE_W):
            continue  # the line passes beside the boxes or through a gap
        # the nearer gap: before this box (slot) or after it (slot + 1)
        slot += offset >= NODE_W / 2
        gx = round(x0 + slot * pitch - GAP_X / 2)
        if gx != cx:
            if down:
                d.append(f"v{down}")
                cy += down
            d.append(_s_curve(gx - cx, top - cy))
            cx, cy = gx, top
        down = top + NODE_H - cy
    if down:
        d.append(f"v{down}")
        cy += down
    d.append(_s_curve(x2 - cx, y2 - cy))
    return "".join(d)


def _s_curve(dx: int, dy: int) -> str:
    """Relative path data of a curve leaving and arriving vertically, ``dx`` across, ``dy``
    down (relative numbers are short: they keep a big graph's SVG small).
    """
    if dx == 0 and dy > 0:
        return f"v{dy}"
    bend = max(GAP_Y // 2, dy // 2) if dy > 0 else GAP_Y
    return f"c0 {bend} {dx} {dy - bend} {dx} {dy}"


def _ports(x: int, edges: list[tuple[str, str]], into: dict[tuple[str, str], int]) -> None:
    """Spread ``edges`` over the middle of a box's side starting at ``x`` (into ``into``)."""
    n = len(edges)
    if not n:
        return
    mid = x + NODE_W // 2
    step = min(12.0, NODE_W * 0.6 / (n - 1)) if n > 1 else 0.0
    for i, edge in enumerate(edges):
        into[edge] = round(mid + (i - (n - 1) / 2) * step)
