"""The IR: typed SSA graphs, their text and JSON forms, networkx export, lint, interpreter."""

from tracegrad.ir.core import CONSTANT, CUSTOM, Node, Value
from tracegrad.ir.graph import Graph

__all__ = ["CONSTANT", "CUSTOM", "Graph", "Node", "Value"]
