"""Shared helpers for the op tests: recording which registry ops a piece of code runs."""

from __future__ import annotations

import contextlib
import importlib

import pytest

from tracegrad.ops import registry

# ``tracegrad.tensor`` the attribute is the tensor() factory; the module has to be looked up.
tensor_module = importlib.import_module("tracegrad.tensor")


@contextlib.contextmanager
def recording_ops():
    """Yield a list that collects ``(op, input tensors, attrs, out)`` for every op dispatched.

    Tensor methods reach ops through ``tracegrad.tensor.apply`` and VJP rules through the
    registry's dispatcher; both are wrapped so nothing slips past.
    """
    calls = []
    original = tensor_module.apply

    def spy(op, inputs, attrs):
        out = original(op, inputs, attrs)
        calls.append((op, tuple(inputs), dict(attrs), out))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tensor_module, "apply", spy)
        mp.setattr(registry, "_dispatcher", spy)
        yield calls


@pytest.fixture
def op_recorder():
    """The ``recording_ops`` context manager, for tests (conftest modules are not importable)."""
    return recording_ops
