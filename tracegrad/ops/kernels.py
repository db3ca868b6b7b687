"""The namespace generated code calls kernels through: ``from tracegrad.ops import kernels as rt``.

Each kernel lives in the family file of the op that runs it, next to the op's declaration,
marked ``@kernel`` (what families share is in ``tracegrad/ops/runtime.py``); this module only
gathers them under their names, so generated code reads ``rt.sigmoid(x)``. Importing it imports
the ``tracegrad.ops`` package first, which declares every family.
"""

from tracegrad.ops.runtime import CHUNK, KERNELS, class_dim

__all__ = ["CHUNK", "class_dim", *KERNELS]

# Plain module attributes, not a module __getattr__: generated code looks kernels up on every
# call, and a dictionary hit is the cheapest lookup there is.
globals().update(KERNELS)
