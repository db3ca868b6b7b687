"""Tensors: the Tensor class and everything that runs ops on it.

Layers, each importing only those before it:

- ``tracing``: the thread-local tracer switch;
- ``core``: the Tensor class (storage, version, autograd attributes, conversion) and turning
  Python values into tensors;
- ``promotion``: PyTorch's type promotion of operands;
- ``dispatch``: applying an op, eagerly or to the tracer, optionally writing into a tensor;
- ``indexing``: Python index expressions and shape arguments as the ops take them;
- ``methods``: the Tensor methods, installed on import;
- ``numeric``: composite math methods PyTorch and NumPy share, installed on import.
"""

from tracegrad.tensor.core import (
    MaxResult,
    Size,
    Tensor,
    as_array,
    as_tensor,
    backward,
    install_numpy_protocol,
    is_symbolic,
    seed_gradient,
    tensor,
    wrap,
)
from tracegrad.tensor.dispatch import apply, call, float_errors_ignored, result_type
from tracegrad.tensor.indexing import index_key, infer_shape, shape_args
from tracegrad.tensor.methods import cat, einsum, stack, tril, triu, where
from tracegrad.tensor.numeric import tensordot
from tracegrad.tensor.promotion import binary, float_unary, promote_operands, to_dtype
from tracegrad.tensor.tracing import active_tracer, next_serial, set_tracer

__all__ = [
    "MaxResult",
    "Size",
    "Tensor",
    "active_tracer",
    "apply",
    "as_array",
    "as_tensor",
    "backward",
    "binary",
    "call",
    "cat",
    "einsum",
    "float_errors_ignored",
    "float_unary",
    "index_key",
    "infer_shape",
    "install_numpy_protocol",
    "is_symbolic",
    "next_serial",
    "promote_operands",
    "result_type",
    "seed_gradient",
    "set_tracer",
    "shape_args",
    "stack",
    "tensordot",
    "tensor",
    "to_dtype",
    "tril",
    "triu",
    "where",
    "wrap",
]
