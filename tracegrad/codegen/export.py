"""Writing a specialization as a standalone module that imports only NumPy, plus a ``.npz``
with its parameters and constants."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np

from tracegrad.codegen.emit import _ENV, render_module
from tracegrad.ops import kernels


def kernels_source() -> str:
    """The kernels module's code without its docstring and NumPy import (already present)."""
    source = inspect.getsource(kernels)
    source = re.sub(r'^""".*?"""\n', "", source, count=1, flags=re.S)
    return source.replace("import numpy as np\n", "").strip() + "\n"


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
    path.write_text(render_module(functions, title, runtime, graphs))
    arrays = {f"param__{k}": v for k, v in parameters.items()}
    arrays.update({f"const__{k}": v for k, v in program.constants.items()})
    np.savez(npz, **arrays)
    return path
