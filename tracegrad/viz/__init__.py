"""Pictures of graphs: Graphviz DOT, standalone SVG, and one self-contained HTML page.

Every function takes ``views``, a list of ``(title, Graph)`` pairs, for example::

    views = [("forward (optimized)", cm.graph), ("backward (optimized)", cm.backward_graph),
             ("forward (traced)", tg.trace(model, x))]
    tracegrad.viz.render(views, "graph.html", code=cm.code)

and optionally ``generated``, the (FunctionSource, Graph) pairs of a compiled program: the
views of those graphs then show the code's variable names and the memory plan's badges as the
code generator recorded them.

Each graph input and each IR node becomes one box whose id is the value name of its (first)
output prefixed by its view's position: ``g0_12``, ``g1_grad_7``; members of a fused node are
``<fused id>/<name>``. Boxes are coloured by the kind of their op (``scene.KINDS``). The SVG
layout is tracegrad's own (``viz.layout``), so no Graphviz binary is needed for any format.

Modules: ``scene`` (what is shown), ``modules`` (boxes by module call, the page's drawings
of each view), ``layout`` (layered DAG layout), ``draw`` (geometry),
``codelinks`` (statements <-> nodes), ``formats`` (the templates in ``templates/``),
``notebook`` (what notebooks show: graphs, compiled callables' cards, explain() reports).
"""

from tracegrad.ir import graph as _graph
from tracegrad.viz.formats import SUFFIXES, render, to_dot, to_html, to_svg
from tracegrad.viz.notebook import graph_html, graph_svg
from tracegrad.viz.scene import KINDS, backward_roles, build_scene, code_vars, kind_of

_graph.PICTURES.update(html=graph_html, svg=graph_svg)  # (a Graph in a notebook: its picture)

__all__ = [
    "SUFFIXES",
    "render",
    "to_dot",
    "to_svg",
    "to_html",
    "KINDS",
    "build_scene",
    "backward_roles",
    "code_vars",
    "kind_of",
]
