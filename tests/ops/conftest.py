"""Shared helpers for the op tests: recording which registry ops a piece of code runs."""

from __future__ import annotations

import contextlib

import pytest

from tracegrad.tensor import Tensor, dispatch


@contextlib.contextmanager
def recording_ops():
    """Yield a list that collects ``(op, input tensors, attrs, out)`` for every op dispatched.

    Tensor methods reach ops through ``tracegrad.tensor.dispatch.apply`` and VJP rules through
    ``Tensor.apply_op``; both are wrapped so nothing slips past.
    """
    calls = []
    original = dispatch.apply

    def spy(op, inputs, attrs, **write):
        out = original(op, inputs, attrs, **write)
        calls.append((op, tuple(inputs), dict(attrs), out))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dispatch, "apply", spy)
        mp.setattr(Tensor, "apply_op", staticmethod(spy))
        yield calls


@pytest.fixture
def op_recorder():
    """The ``recording_ops`` context manager, for tests (conftest modules are not importable)."""
    return recording_ops
