"""tracegrad: a graph-compiling automatic-differentiation library with PyTorch's API.

``import tracegrad as tg``: tensors and eager autograd, ``tg.nn``, ``tg.optim``, ``tg.data``.
"""

from tracegrad import autograd, cuda, dtypes, numpy_interop
from tracegrad.creation import (
    DoubleTensor,
    FloatTensor,
    LongTensor,
    arange,
    as_tensor,
    contiguous_format,
    empty,
    empty_like,
    eye,
    from_numpy,
    full,
    full_like,
    legacy_contiguous_format,
    linspace,
    ones,
    ones_like,
    preserve_format,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    randperm,
    zeros,
    zeros_like,
)
from tracegrad.devices import device
from tracegrad.dtypes import DType, float32, float64, int64
from tracegrad.dtypes import bool_ as bool
from tracegrad.errors import DTypeError, MemoryBudgetError, ShapeError, TraceError
from tracegrad.functions import *  # noqa: F403
from tracegrad.random import manual_seed
from tracegrad.tape import (
    enable_grad,
    inference_mode,
    is_grad_enabled,
    no_grad,
    set_grad_enabled,
)
from tracegrad.tensor import Size, Tensor, tensor

float = float32
double = float64
long = int64

from tracegrad import data, distributed, distributions, ir, linalg, nn, optim, passes
from tracegrad.blas import get_num_threads, set_num_threads
from tracegrad.compile import CompiledModule, compile, grad, trace, value_and_grad
from tracegrad.compiled.function import CompiledFunction
from tracegrad.compiled.specializer import RecompileError
from tracegrad.serialization import SerializationError, load, save
from tracegrad.version import __version__
