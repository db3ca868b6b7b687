"""The op registry. Importing this package declares every primitive (one file per family).

Families: ``elementwise`` (unary math, binary arithmetic, comparisons, where, cast), ``reduce``
(and the scans, sorts and prod along a dim), ``shape`` (views, cat), ``index`` (getitem,
scatter_add, one_hot), ``linalg`` (matmul, einsum), ``nn`` (windows, softmax, losses,
layer_norm), ``random``, ``optim`` (fused optimizer updates), ``fused`` (one-kernel
gradients and the pieces a training step splits ops into) and ``collective`` (reductions over
the processes of a data-parallel job), ``recurrent`` (an LSTM layer's loop over time as one
op).
``registry`` holds the ``Op`` entry and the property names passes ask (``ops_with(PROP)``);
``runtime`` what the NumPy kernels of several families share; ``kernels`` gathers the kernels
under the names generated code calls (``rt.<name>``).

What adding an op touches, with softplus (log(1 + exp(x))) as the worked example:

1. One entry in its family file, ``elementwise.py``: ``unary("softplus", impl, vjp, emit,
   saves=("x",), props={NON_NEGATIVE})``, the VJP rule written in ops (``lambda c, g: g *
   call("sigmoid", c.x)``). A property puts it in every pass that asks: ``NON_NEGATIVE`` lets
   canonicalize drop ``exp(log(softplus(x)))``; ``CHEAP`` would let the backward recompute it
   instead of saving it. If the NumPy code is more than an expression for the emit template
   (softplus wants the stable ``np.logaddexp(x, 0)`` into ``out=``), write it as a function
   marked ``@kernel`` right above the entry and emit ``"rt.softplus({0})"``: generated code
   finds it under that name and ``cm.export()`` copies it, with what it reads, into the
   standalone module. Nothing in ``kernels.py``, ``passes/`` or ``codegen/`` changes.
2. The public names: ``F.softplus`` in ``nn/functional.py`` (``call("softplus", x)``), the
   ``nn.Softplus`` module in ``nn/layers.py`` and its export in ``nn/__init__.py``; a Tensor
   method is one line of ``ONE_OP_METHODS`` in ``tensor/methods.py``.
3. Test rows, each table failing until the op has them, generated from the entry's
   ``samples=`` (``registry.Sample``: inputs in [-2, 2] and smooth unless declared otherwise:
   ``POSITIVE``, kinks, attributes, shape sets, a sample per input, index or mask draws, and
   ``ref``, a NumPy reference): gradients (``tests/ops/test_op_gradients.py``), forward values
   and the shape/dtype rule (``tests/ops/test_op_forward.py``; an elementwise op also gets a
   line of ``UNARY`` or ``BINARY`` there, through its public method), compiled == eager
   (``tests/compile/test_compile_ops.py``) and extreme values compiled == eager bit for bit
   (``tests/compile/test_compile_extreme_values.py``).
"""

from tracegrad.ops import (
    collective,
    elementwise,
    fused,
    index,
    linalg,
    nn,
    optim,
    random,
    recurrent,
    reduce,
    shape,
)
from tracegrad.ops.registry import (
    CHEAP,
    COMMUTATIVE,
    ELEMENTWISE,
    LAYOUT_VIEW,
    NON_NEGATIVE,
    OPS,
    OVERWRITES_INPUT,
    REDUCE,
    VIEW,
    Op,
    VJPContext,
    call,
    ops_with,
    register,
    vjp,
)

__all__ = [
    "CHEAP",
    "COMMUTATIVE",
    "ELEMENTWISE",
    "LAYOUT_VIEW",
    "NON_NEGATIVE",
    "OPS",
    "OVERWRITES_INPUT",
    "REDUCE",
    "VIEW",
    "Op",
    "VJPContext",
    "call",
    "ops_with",
    "register",
    "vjp",
]
