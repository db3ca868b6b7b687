"""Elementwise fusion: a chain of elementwise ops becomes one generated kernel.

    t1 = f(a, b); t2 = g(t1, c); t3 = h(t2)   ->   t3 = fused[f, g, h](a, b, c)

A chain is a run of elementwise nodes of one output type where each value is read only by the
next member. The kernel (emitted by codegen) works through one buffer with in-place ufunc
calls (``np.add(out, c, out=out)``), so its intermediates take no memory of their own.

A chain may start with a matrix product: the linear pattern, matmul + bias [+ activation],

    y = relu(x @ w^T + b)   ->   y = fused[matmul, add, relu](x, w^T, b)

whose kernel writes the product into its buffer and adds the bias and applies the activation
there in place. (Its gradient is the activation's gradient, two products and the bias
gradient as ``ones @ rows``: nodes of their own.)
"""

from __future__ import annotations

from collections import Counter

from tracegrad.ir.core import FUSED, Node, Phase, Value
from tracegrad.ir.graph import Graph
from tracegrad.ops import ELEMENTWISE, OPS
from tracegrad.ops.registry import RANDOM
from tracegrad.passes.pipeline import note, register_pass
from tracegrad.scopes import common_scope


def _fusable(node) -> bool:
    op = OPS.get(node.op)
    if op is None or ELEMENTWISE not in op.props or op.out is None or RANDOM in op.props:
        return False
    return len(node.outputs) == 1 and bool(node.outputs[0].type.shape)


def _product(node) -> bool:
    """A matrix product that may head a chain (the linear pattern)."""
    return node.op == "matmul" and len(node.outputs[0].type.shape) >= 2


def is_linear(node) -> bool:
    """Whether a fused node is the linear pattern (it starts with a product, so its kernel
    reads all of its inputs before and while writing its buffer: none may share it)."""
    return node.attrs["kind"].startswith(LINEAR)


LINEAR = "linear"


def chains(graph: Graph) -> list[list[Node]]:
    """Maximal chains of fusable nodes, each member's value read only by the next member."""
    uses = Counter([*(v for n in graph.nodes for v in n.inputs), *graph.outputs])
    uses.update(graph.updates.values())
    # A new value of a state input is best written straight into that input by the memory
    # plan, which a fused kernel reading the input later could not allow: leave those alone.
    updates = set(graph.updates.values())
    open_chain: dict[Value, list[Node]] = {}  # tail value -> its chain
    by_head: dict[Node, list[Node]] = {}  # first member -> the chain as it grows
    for node in graph.nodes:
        out = node.outputs[0]
        if _product(node) and out not in updates:
            open_chain[out] = by_head[node] = [node]  # a head, never a member
            continue
        if not _fusable(node) or out in updates:
            continue
        chain = next(
            (
                open_chain.pop(v)
                for v in node.inputs
                if v in open_chain and uses[v] == 1 and v.type == out.type
            ),
            None,
        )
        chain = [*chain, node] if chain else [node]
        by_head[chain[0]] = chain
        open_chain[out] = chain
    return [chain for chain in by_head.values() if len(chain) > 1]


def fused_node(chain: list[Node]) -> Node:
    """One node computing ``chain``: its inputs are what the members read from outside."""
    inside = {n.outputs[0] for n in chain}
    outer = list(dict.fromkeys(v for n in chain for v in n.inputs if v not in inside))
    stand_in = {v: Value(f"a{i}", v.type) for i, v in enumerate(outer)}
    members = []
    for n in chain:
        out = Value(n.outputs[0].name, n.outputs[0].type)
        members.append(
            Node(n.op, [stand_in[v] for v in n.inputs], [out], dict(n.attrs), scope=n.scope)
        )
        stand_in[n.outputs[0]] = out
    body = Graph([stand_in[v] for v in outer], members, [members[-1].outputs[0]])
    tail = chain[-1]
    kind = LINEAR if _product(chain[0]) else "elementwise"
    attrs = {"body": body, "kind": f"{kind} " + " ".join(n.op for n in chain)}
    phase, grad_of = _phase(chain)
    scope = common_scope(n.scope for n in chain)
    return Node(
        FUSED, outer, [tail.outputs[0]], attrs, tail.location,
        phase=phase, grad_of=grad_of, scope=scope,
    )  # fmt: skip


def _phase(chain: list[Node]) -> tuple[Phase, str | None]:
    """A kernel's phase and the gradients it computes: backward if a member is (a forward
    member read only by a gradient joins it there), else the update if a member is."""
    gradients = dict.fromkeys(n.grad_of or "?" for n in chain if n.phase is Phase.BACKWARD)
    if gradients:
        return Phase.BACKWARD, ", ".join(gradients)
    update = any(n.phase is Phase.UPDATE for n in chain)
    return (Phase.UPDATE if update else Phase.FORWARD), None


@register_pass("fuse")
def fuse(graph: Graph) -> Graph:
    """Chains of elementwise ops become single fused kernels: f(g(h(x))) -> fused[h,g,f](x)."""
    found = chains(graph)
    if not found:
        return graph
    tail_of = {chain[-1]: chain for chain in found}
    members = {n for chain in found for n in chain}
    nodes = []
    for node in graph.nodes:
        if node in tail_of:
            nodes.append(fused_node(tail_of[node]))
            note("fused", nodes[-1])  # (with its members' common scope)
        elif node not in members:
            nodes.append(node)
    return Graph(graph.inputs, nodes, graph.outputs, graph.updates)
