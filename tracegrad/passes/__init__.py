"""Graph passes: each a named Graph -> Graph function, run in order by ``tracegrad.passes.run``.

Every module of this package is imported here, so a pass registers itself by being a file:
adding a pass is its file (a function under ``@register_pass("name")``) and its line in
``DEFAULT_PIPELINE``.
"""

import importlib
import pkgutil

from tracegrad.passes import autodiff
from tracegrad.passes.pipeline import (
    DEFAULT_PIPELINE,
    PASSES,
    PassResult,
    register_pass,
    resolve,
    run,
    run_pass,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "DEFAULT_PIPELINE",
    "PASSES",
    "PassResult",
    "autodiff",
    "register_pass",
    "resolve",
    "run",
    "run_pass",
]
