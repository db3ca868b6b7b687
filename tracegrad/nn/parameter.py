"""Parameter: a leaf tensor a Module registers as learnable."""

from __future__ import annotations

from tracegrad.tensor import Tensor, as_array


class Parameter(Tensor):
    """A tensor that is a module parameter; requires grad unless told otherwise."""

    def __init__(self, data=None, requires_grad: bool = True):
        array = data.array if isinstance(data, Tensor) else as_array(data, None)
        super().__init__(None, requires_grad=False)
        self.array = array
        self.requires_grad = requires_grad

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()
