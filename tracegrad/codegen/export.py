"""Writing a specialization as a standalone module that imports only NumPy, plus a ``.npz``
with its parameters and constants."""

from __future__ import annotations

import ast
import dis
import inspect
import re
import textwrap
from pathlib import Path

import numpy as np

from tracegrad import blas
from tracegrad.codegen.emit import _ENV, render_module
from tracegrad.ops import runtime
from tracegrad.ops.runtime import KERNELS

# Values a kernel may read from its module that are written out as literals.
_LITERALS = (bool, int, float, str, tuple, type(None))


def kernels_source() -> str:
    """The code of every kernel generated code may call, for a module that imports only NumPy:
    the shared runtime module whole (without its docstring and NumPy import, already present),
    then each family's kernels with the imports, constants and helpers they read."""
    source = inspect.getsource(runtime)
    source = re.sub(r'^""".*?"""\n', "", source, count=1, flags=re.S)
    source = source.replace("import numpy as np\n", "").strip() + "\n"
    collected = _KernelSources()
    for fn in KERNELS.values():
        collected.add(fn.__name__, fn)
    return source + collected.text()


class _KernelSources:
    """Definitions gathered by following the global names kernels read, each once, a helper
    before the functions that read it (decorators run when a function is defined)."""

    def __init__(self):
        self.seen: dict[str, object] = {}
        self.imports: list[str] = []
        self.constants: list[str] = []
        self.functions: list[str] = []

    def add(self, name: str, value) -> None:
        known = self.seen.get(name, getattr(runtime, name, None))  # runtime's are copied whole
        if known is not None:
            if known is not value:
                raise ValueError(f"two kernels' helpers are both named {name!r}")
            return
        self.seen[name] = value
        if inspect.ismodule(value):
            self.imports.append(_import_line(name, value))
        elif isinstance(value, _LITERALS):
            self.constants.append(f"{name} = {value!r}")
        elif type(value) is dict and not value:  # a table kernels keep state in, empty at rest
            self.constants.append(f"{name} = {{}}")
        elif inspect.isfunction(inspect.unwrap(value)):
            self._add_function(inspect.unwrap(value))
        else:
            raise TypeError(f"a kernel reads {name!r}, a {type(value).__name__} export cannot copy")

    def _add_function(self, fn) -> None:
        source = textwrap.dedent(inspect.getsource(fn))
        for name in sorted(_global_names(fn.__code__) | _decorator_names(source)):
            if name in fn.__globals__:
                self.add(name, fn.__globals__[name])
        self.functions.append(source)

    def text(self) -> str:
        parts = ["\n".join(self.imports), "\n".join(self.constants), *self.functions]
        return "\n\n\n".join(part.strip() for part in parts if part) + "\n"


def pool_source() -> str:
    """The thread pool's helpers (``tracegrad.blas``: ``thread_pool``, ``one_blas_thread``)
    copied, for a module compiled with ``threads`` > 1 that imports only NumPy; threadpoolctl
    keeps BLAS at one thread beside the pool where installed (without it BLAS keeps its own
    threads: the same results, more threads than cores)."""
    helpers = (blas._blas_libraries, blas.one_blas_thread, blas.thread_pool)
    source = "\n\n".join(textwrap.dedent(inspect.getsource(h)).strip() for h in helpers)
    return _ENV.get_template("standalone_pool.py.j2").render(helpers=source)


def _global_names(code) -> set[str]:
    """The global names ``code`` and the functions nested in it read."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"}
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _global_names(const)
    return names


def _decorator_names(source: str) -> set[str]:
    (definition,) = ast.parse(source).body
    if not isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return set()
    return {n.id for d in definition.decorator_list for n in ast.walk(d) if isinstance(n, ast.Name)}


def _import_line(name: str, module) -> str:
    package, _, last = module.__name__.rpartition(".")
    if module.__name__ == name:
        return f"import {name}"
    if last == name:
        return f"from {package} import {name}"
    return f"import {module.__name__} as {name}"


def export_program(path, program, parameters: dict[str, np.ndarray]) -> Path:
    """Write ``path`` (a .py module) and ``path`` with suffix .npz; returns the .py path."""
    path = Path(path)
    npz = path.with_suffix(".npz")
    runtime = _ENV.get_template("standalone_runtime.py.j2").render(
        kernels=kernels_source(), npz=npz.name, parameters=list(parameters)
    )
    functions = [fn for fn, _ in program.parts]
    graphs = [graph for _, graph in program.parts]
    title = f"{program.title} (standalone export: imports only NumPy)"
    path.write_text(render_module(functions, title, runtime, graphs, pool_source()))
    arrays = {f"param__{k}": v for k, v in parameters.items()}
    arrays.update({f"const__{k}": v for k, v in program.constants.items()})
    # (the stubs' allow_pickle keyword makes mypy reject any **dict of arrays)
    np.savez(npz, **arrays)  # type: ignore[arg-type]
    return path
