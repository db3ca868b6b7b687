"""A layered (Sugiyama-style) layout of a DAG, in pure Python and fast for thousands of nodes.

1. Layers: ``networkx.topological_generations`` puts each node as early as it can go; then,
   bottom-up, every node that has users moves down to just above its first user. Without that
   step constants, parameters and anything computed from them alone sit in the first rows with
   edges hundreds of rows long (in a 24-block transformer's backward graph, edges crossed some
   190,000 rows in all before, some 2,000 after). Empty rows are then squeezed out.
2. Every edge longer than one row gets a dummy node in each row it crosses, so it is routed
   through its own slot between boxes instead of across them.
3. Order within rows: barycenter sweeps, down and up (crossings drop fast after a couple).
4. x: Brandes-Köpf style: nodes are aligned into vertical blocks with a median neighbour,
   blocks packed against a side, and the narrow ones of four such runs averaged.
5. y: rows are stacked; routes go straight through rows and bend only in the gaps.

Edges longer than ``MAX_SPAN`` rows are not routed: a value used all over the graph (a
constant shared by every block after CSE) would otherwise draw dozens of edges the height of
the picture and cost a dummy per row crossed. They become *jumps*: a short stub leaving the
source and a short stub entering the target, tied together by their tooltips and highlights.

``layout(dag, sizes)`` returns centres of the nodes and, per edge, the polyline it follows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate, pairwise

import networkx as nx

ROW_GAP = 32  # vertical room between rows, where edges bend
COL_GAP = 18  # horizontal room between neighbouring boxes in a row
DUMMY_WIDTH = 8  # the slot a passing edge takes in a row
PORT_SPREAD = 0.6  # fraction of a box's width over which edge ends are spread
SWEEPS = 4  # barycenter passes (alternating down and up)
MAX_SPAN = 40  # rows; longer edges are drawn as jumps
JUMP_LENGTH = 12  # of the stubs of a jump
NARROW = 1.25  # runs at most this much wider than the narrowest are averaged


@dataclass
class Layout:
    pos: dict  # node -> (centre x, centre y)
    routes: dict  # (u, v) -> [(x, y), ...] from the bottom of u to the top of v
    jumps: dict  # (u, v) -> (stub out of u, stub into v), each a list of points
    width: float
    height: float


@dataclass
class _Rows:
    """The layered graph with dummies: rows of nodes, each node's neighbours above and below,
    and, once placed, x of every node and the top and height of every row."""

    rows: list[list]
    row_of: dict
    up: dict
    down: dict
    chains: dict  # (u, v) -> dummies of that edge, top to bottom
    xs: dict = field(default_factory=dict)
    tops: list = field(default_factory=list)
    heights: list = field(default_factory=list)


def layout(dag: nx.DiGraph, sizes: dict, margin: float = 12) -> Layout:
    """Place ``dag`` (node order = initial order) with ``sizes[node] = (width, height)``."""
    if dag.number_of_nodes() == 0:
        return Layout({}, {}, {}, 2 * margin, 2 * margin)
    layer = assign_layers(dag)
    routed = dag.copy()
    routed.remove_edges_from([(u, v) for u, v in dag.edges if layer[v] - layer[u] > MAX_SPAN])
    grid = _expand(routed, layer)
    _order(grid)
    widths = {n: sizes[n][0] if n in sizes else DUMMY_WIDTH for n in grid.row_of}
    xs = _place(grid, widths)
    left = min(xs[n] - widths[n] / 2 for n in xs)
    grid.xs = {n: x - left + margin for n, x in xs.items()}
    grid.tops, grid.heights = _row_extents(grid, sizes, margin)
    pos = {n: (grid.xs[n], grid.tops[r] + grid.heights[r] / 2) for n, r in layer.items()}
    routes, jumps = _edges(dag, grid, pos, sizes)
    width = max(grid.xs[n] + widths[n] / 2 for n in grid.xs) + margin
    return Layout(pos, routes, jumps, width, grid.tops[-1] + grid.heights[-1] + margin)


def assign_layers(dag: nx.DiGraph) -> dict:
    """Node -> row index (see step 1 of the module docstring)."""
    layer = {n: i for i, gen in enumerate(nx.topological_generations(dag)) for n in gen}
    for n in reversed(list(nx.topological_sort(dag))):
        users = dag.succ[n]
        if users:
            layer[n] = min(layer[u] for u in users) - 1
    squeeze = {row: i for i, row in enumerate(sorted(set(layer.values())))}
    return {n: squeeze[row] for n, row in layer.items()}


def _expand(dag: nx.DiGraph, layer: dict) -> _Rows:
    rows: list[list] = [[] for _ in range(max(layer.values()) + 1)]
    grid = _Rows(rows, dict(layer), {n: [] for n in dag}, {n: [] for n in dag}, {})
    for n in dag:
        rows[layer[n]].append(n)
    for u, v in dag.edges:
        previous, chain = u, []
        for row in range(layer[u] + 1, layer[v]):
            dummy = ("dummy", u, v, row)
            rows[row].append(dummy)
            grid.row_of[dummy] = row
            grid.up[dummy], grid.down[dummy] = [previous], []
            grid.down[previous].append(dummy)
            previous = dummy
            chain.append(dummy)
        grid.down[previous].append(v)
        grid.up[v].append(previous)
        grid.chains[u, v] = chain
    return grid


def _order(grid: _Rows) -> None:
    """Barycenter sweeps: sort each row by the mean index of its neighbours in the row before."""
    index = {n: i for row in grid.rows for i, n in enumerate(row)}

    def barycenter(n, neighbours):
        near = neighbours[n]
        return sum(index[m] for m in near) / len(near) if near else index[n]

    for sweep in range(SWEEPS):
        downward = sweep % 2 == 0
        neighbours = grid.up if downward else grid.down
        rows = grid.rows[1:] if downward else reversed(grid.rows[:-1])
        for row in rows:
            row.sort(key=lambda n: barycenter(n, neighbours))
            for i, n in enumerate(row):
                index[n] = i


def _place(grid: _Rows, widths: dict) -> dict:
    """x of every node, after Brandes & Köpf: four runs, aligning each node with a median
    neighbour above (or below) and packing blocks to the left (or right); the result is the
    mean of the narrow runs (see ``_balance``), then rows are spaced out where they overlap.

    Packing against a side, rather than pulling each row towards the last, keeps deep graphs
    from drifting sideways block after block.
    """
    runs = []
    for downward in (True, False):
        neighbours = grid.up if downward else grid.down
        for leftward in (True, False):
            rows = grid.rows if downward else grid.rows[::-1]
            rows = [row if leftward else row[::-1] for row in rows]
            xs = _compact(rows, _align(rows, neighbours), widths)
            runs.append(xs if leftward else {n: -x for n, x in xs.items()})
    xs = _balance(runs)
    for row in grid.rows:
        xs.update(zip(row, _pack([xs[n] for n in row], _gaps(row, widths)), strict=True))
    return xs


def _is_dummy(n) -> bool:
    return isinstance(n, tuple) and n[0] == "dummy"


def _align(rows: list[list], upper: dict) -> dict:
    """Vertical alignment: node -> root of its block. Row by row, each node joins the block of
    its median upper neighbour (the left one first if there are two), unless that would cross
    an alignment already made or an edge between two dummies."""
    pos = {n: i for row in rows for i, n in enumerate(row)}
    blocked = _inner_conflicts(rows, upper, pos)
    root = {n: n for row in rows for n in row}
    taken = set()
    for row in rows[1:]:
        right_of = -1
        for v in row:
            ups = sorted(upper[v], key=pos.__getitem__)
            for m in sorted({(len(ups) - 1) // 2, len(ups) // 2}) if ups else ():
                u = ups[m]
                if v not in taken and (u, v) not in blocked and right_of < pos[u]:
                    root[v] = root[u]
                    taken.add(v)
                    right_of = pos[u]
    return root


def _inner_conflicts(rows: list[list], upper: dict, pos: dict) -> set:
    """Edges crossing an inner segment (dummy to dummy): they give way to long edges."""
    blocked: set[tuple] = set()
    for above, row in pairwise(rows):
        k0, start = 0, 0
        for index, v in enumerate(row):
            inner = next((u for u in upper[v] if _is_dummy(u)), None) if _is_dummy(v) else None
            if inner is None and index < len(row) - 1:
                continue
            k1 = pos[inner] if inner is not None else len(above) - 1
            for w in row[start : index + 1]:
                blocked.update((u, w) for u in upper[w] if not k0 <= pos[u] <= k1)
            start, k0 = index + 1, k1
    return blocked


def _compact(rows: list[list], root: dict, widths: dict) -> dict:
    """Each block as far left as the blocks left of its members allow."""
    gaps: dict[tuple, float] = {}
    for row in rows:
        for left, right, gap in zip(row, row[1:], _gaps(row, widths)):
            key = (root[left], root[right])
            gaps[key] = max(gap, gaps.get(key, 0.0))
    order = nx.DiGraph(gaps.keys())
    order.add_nodes_from(set(root.values()))
    x: dict = {}
    for block in nx.topological_sort(order):
        x[block] = max((x[a] + gaps[a, block] for a in order.predecessors(block)), default=0.0)
    return {n: x[root[n]] for n in root}


def _balance(runs: list[dict]) -> dict:
    """Shift the runs onto the narrowest one (left runs by their left side, right runs by
    their right side) and average those nearly as narrow. Brandes and Köpf take the mean of
    the middle two of the four x, but one run can staircase across the page (blocks of a
    deep graph each starting right of the last); averaging only narrow runs avoids that, and
    a mean of placements with one order keeps their spacing."""
    spans = [(min(r.values()), max(r.values())) for r in runs]
    lo, hi = min(spans, key=lambda span: span[1] - span[0])
    shifts = [lo - spans[i][0] if i % 2 == 0 else hi - spans[i][1] for i in range(len(runs))]
    narrow = [
        (run, shift)
        for run, shift, (a, b) in zip(runs, shifts, spans, strict=True)
        if b - a <= NARROW * (hi - lo) + COL_GAP
    ]
    return {n: sum(run[n] + shift for run, shift in narrow) / len(narrow) for n in runs[0]}


def _gaps(row, widths) -> list[float]:
    """The least distance between the centres of neighbours in a row."""
    return [(widths[a] + widths[b]) / 2 + COL_GAP for a, b in pairwise(row)]


def _pack(desired: list[float], gaps: list[float]) -> list[float]:
    """The positions closest (least squares) to ``desired`` with ``x[i+1] - x[i] >= gaps[i]``.

    With offsets o[i] = gaps[0] + ... + gaps[i-1], y = x - o must be non-decreasing: isotonic
    regression, solved in one pass by pooling adjacent violators into blocks at their mean.
    """
    offsets = list(accumulate(gaps, initial=0.0))
    blocks: list[tuple[float, int]] = []
    for d, o in zip(desired, offsets, strict=True):
        mean, count = d - o, 1
        while blocks and blocks[-1][0] > mean:
            prev_mean, prev_count = blocks.pop()
            total = prev_count + count
            mean, count = (prev_mean * prev_count + mean * count) / total, total
        blocks.append((mean, count))
    ys = [mean for mean, count in blocks for _ in range(count)]
    return [y + o for y, o in zip(ys, offsets, strict=True)]


def _row_extents(grid: _Rows, sizes: dict, margin: float):
    heights = [max((sizes[n][1] for n in row if n in sizes), default=0) for row in grid.rows]
    tops = list(accumulate((h + ROW_GAP for h in heights[:-1]), initial=float(margin)))
    return tops, heights


def _edges(dag, grid: _Rows, pos: dict, sizes: dict) -> tuple[dict, dict]:
    """Routes of the edges kept in the grid, stubs of the others (the jumps)."""
    exits = _ports(dag, grid, sizes, outgoing=True)
    entries = _ports(dag, grid, sizes, outgoing=False)
    routes, jumps = {}, {}
    for u, v in dag.edges:
        bottom = pos[u][1] + sizes[u][1] / 2
        top = pos[v][1] - sizes[v][1] / 2
        xu, xv = exits[u, v], entries[u, v]
        if (u, v) in grid.chains:
            routes[u, v] = [(xu, bottom), *_through_rows(u, v, grid, xu, xv), (xv, top)]
        else:
            jumps[u, v] = ([(xu, bottom), (xu, bottom + JUMP_LENGTH)],
                           [(xv, top - JUMP_LENGTH), (xv, top)])  # fmt: skip
    return routes, jumps


def _through_rows(u, v, grid: _Rows, xu: float, xv: float) -> list:
    """Down to the bottom of u's row, through each dummy's slot, to the top of v's row."""
    ru, rv = grid.row_of[u], grid.row_of[v]
    points = [(xu, grid.tops[ru] + grid.heights[ru])]
    for dummy in grid.chains[u, v]:
        row = grid.row_of[dummy]
        points += [
            (grid.xs[dummy], grid.tops[row]),
            (grid.xs[dummy], grid.tops[row] + grid.heights[row]),
        ]
    return [*points, (xv, grid.tops[rv])]


def _ports(dag, grid: _Rows, sizes, outgoing: bool) -> dict:
    """Where each edge leaves (or enters) its box: spread along the side in the order of the
    x where each edge goes next, so edges fanning out of one box do not cross at the box."""

    def next_x(edge):
        chain = grid.chains.get(edge)
        if chain:
            return grid.xs[chain[0] if outgoing else chain[-1]]
        return grid.xs[edge[1] if outgoing else edge[0]]

    ports = {}
    for n in dag:
        edges = sorted(dag.out_edges(n) if outgoing else dag.in_edges(n), key=next_x)
        span = sizes[n][0] * PORT_SPREAD
        for k, edge in enumerate(edges):
            offset = span * ((k + 0.5) / len(edges) - 0.5)
            ports[edge] = grid.xs[n] + offset
    return ports
