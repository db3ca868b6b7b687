"""The NumPy backend: graphs to readable Python source, executed and cached by tg.compile."""

from tracegrad.codegen.emit import FunctionSource, emit_function, render_module
from tracegrad.codegen.loader import load

RUNTIME_IMPORT = "from tracegrad.ops import kernels as rt"

__all__ = ["RUNTIME_IMPORT", "FunctionSource", "emit_function", "load", "render_module"]
