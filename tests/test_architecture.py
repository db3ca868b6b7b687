"""The import rules of docs/architecture.md: the package's layers import downward only, and no
module imports another in a circle.

Imports are read from the source (every ``import``/``from`` statement, at module level or inside
a function, except under ``if TYPE_CHECKING:``), so the rules hold for lazy imports too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

import tracegrad

PACKAGE = Path(tracegrad.__file__).parent

# Bottom to top. A module may import modules of its own layer or of layers below; the first
# prefix that matches a module names its layer.
LAYERS = {
    "base": [
        "version",
        "errors",
        "dtypes",
        "random",
        "tape",
        "devices",
        "changes",
        "logs",
        "scopes",
        "blas",
    ],
    "ops": ["ops"],
    "ir": ["ir"],
    "tensors": ["tensor", "autograd", "creation", "functions", "pytree", "cuda", "linalg"],
    "tracer": ["tracer"],
    "passes": ["passes"],
    "codegen": ["codegen"],
    "pictures": ["viz"],
    "compiled": ["compiled"],
    "library": [
        "distributed",
        "nn",
        "optim",
        "data",
        "distributions",
        "serialization",
        "numpy_interop",
    ],
    "entry points": ["compile", "cli", "demo", "__main__", ""],
}


def layer_of(module: str) -> int:
    name = module.removeprefix("tracegrad").removeprefix(".")
    top = name.split(".")[0]
    for rank, prefixes in enumerate(LAYERS.values()):
        if top in prefixes:
            return rank
    raise AssertionError(f"tracegrad.{name} belongs to no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    parts = ["tracegrad", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _under_type_checking(node, parents) -> bool:
    return any(isinstance(p, ast.If) and "TYPE_CHECKING" in ast.unparse(p.test) for p in parents)


def imported(module: str) -> set[str]:
    """The tracegrad modules ``module`` imports."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    found = set()
    stack = [(tree, ())]
    while stack:
        node, parents = stack.pop()
        for child in ast.iter_child_nodes(node):
            stack.append((child, (*parents, node)))
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not _under_type_checking(
            node, parents
        ):
            found |= set(_targets(module, node, path.name == "__init__.py"))
    return {m for m in found if m != module}


def _targets(module: str, node, is_package: bool):
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = module.split(".")
        if node.level:
            base = base if is_package else base[:-1]
            base = base[: len(base) - node.level + 1]
        else:
            base = []
        prefix = ".".join([*base, *([node.module] if node.module else [])])
        # ``from package import module`` needs the module; any other name, the package
        names = [
            f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in MODULES else prefix
            for alias in node.names
        ]
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("tracegrad"):
            yield name


def import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for module in MODULES:
        graph.add_node(module)
        graph.add_edges_from((module, target) for target in imported(module))
    return graph


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_layer_imports_only_itself_and_the_layers_below(module):
    names = list(LAYERS)
    upward = [
        f"{target} ({names[layer_of(target)]})"
        for target in sorted(imported(module))
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, f"{module} ({names[layer_of(module)]}) imports a higher layer: {upward}"


def test_no_import_cycles():
    graph = import_graph()
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])
