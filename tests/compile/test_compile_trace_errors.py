"""What cannot be traced raises ``tg.TraceError`` naming the user's file and line:
data-dependent Python control flow and NumPy functions tracegrad does not support."""

from __future__ import annotations

import re

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim


def at(marker: str) -> str:
    """A regex for ``file:line`` of the line of this file marked with ``marker``."""
    return re.escape(f"{__file__}:{line_of(marker)}")


def line_of(marker: str) -> int:
    """The line number of the one line of this file that contains ``marker``."""
    with open(__file__) as f:
        lines = [i for i, text in enumerate(f, 1) if marker in text.partition("#")[2]]
    assert len(lines) == 1, marker
    return lines[0]


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        if h.sum() > 0:  # MARK-branch
            return h.relu()
        return h


class Median(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return np.median(self.fc(x), axis=1)  # MARK-median


def test_data_dependent_if_raises_trace_error_at_the_line():
    with pytest.raises(tg.TraceError) as info:
        tg.compile(Branchy())(tg.randn(2, 4))
    message = str(info.value)
    assert f"{__file__}:{line_of('MARK-branch')}" in message
    assert "if h.sum() > 0" in message


def test_data_dependent_if_in_trace_and_grad():
    def f(x):
        if (x * 2).sum() > 0:  # MARK-fn-branch
            return x.sum()
        return -x.sum()

    with pytest.raises(tg.TraceError, match=at("MARK-fn-branch")):
        tg.trace(f, tg.randn(3))
    with pytest.raises(tg.TraceError, match=at("MARK-fn-branch")):
        tg.grad(f)(tg.randn(3))


def test_data_dependent_if_in_a_whole_step():
    model = nn.Linear(3, 2)
    opt = optim.SGD(model.parameters(), lr=0.1)

    def train_step(x):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        while loss.item() > 10:  # MARK-step-while
            loss = loss / 2
        loss.backward()
        opt.step()
        return loss

    before = [p.detach().numpy().copy() for p in model.parameters()]
    with pytest.raises(tg.TraceError, match=at("MARK-step-while")):
        tg.compile(train_step)(tg.randn(4, 3))
    for p, b in zip(model.parameters(), before, strict=True):  # nothing half-applied
        np.testing.assert_array_equal(p.detach().numpy(), b)
        assert p.grad is None


def test_unsupported_numpy_function_raises_trace_error_naming_it():
    with pytest.raises(tg.TraceError) as info:
        tg.compile(Median())(tg.randn(2, 4))
    message = str(info.value)
    assert "median" in message
    assert f"{__file__}:{line_of('MARK-median')}" in message


def test_unsupported_numpy_function_eagerly_is_a_type_error():
    with pytest.raises(TypeError, match="median"):
        Median()(tg.randn(2, 4))


def test_supported_numpy_functions_trace():
    def f(x):
        return np.sum(np.tanh(x) * np.exp(x), axis=0).mean()

    x = tg.tensor(np.linspace(-1, 1, 6).reshape(2, 3))
    graph = tg.trace(f, x)
    assert {"tanh", "exp", "sum"} <= {n.op for n in graph.nodes}
    x_e = tg.tensor(x.numpy(), requires_grad=True)
    (expected,) = tg.autograd.grad(f(x_e), [x_e])
    np.testing.assert_allclose(tg.grad(f)(x).numpy(), expected.numpy(), rtol=1e-6)


def test_item_and_tolist_on_traced_values_raise():
    def f(x):
        return x * float(x.max().item())  # MARK-item

    with pytest.raises(tg.TraceError, match=at("MARK-item")):
        tg.trace(f, tg.randn(3))


def test_bool_mask_from_a_traced_value_raises():
    def f(x):
        return x[x > 0].sum()  # MARK-mask

    with pytest.raises(tg.TraceError, match=at("MARK-mask")):
        tg.trace(f, tg.randn(3))


class Seeded(nn.Module):
    def forward(self, x):
        tg.manual_seed(5)
        return F.dropout(x, 0.5, self.training)


def test_manual_seed_inside_a_compiled_function_raises():
    """Seeding while tracing would seed once, at the trace, while each compiled call draws
    on: the draws of a later call would differ from eager's."""

    def f(x):
        tg.manual_seed(5)  # MARK-seed
        return F.dropout(x, 0.5) + tg.randn(3, dtype=x.dtype)

    with pytest.raises(tg.TraceError, match=at("MARK-seed")):
        tg.compile(f)(tg.ones(3))
    seeded = Seeded()
    with pytest.raises(tg.TraceError, match="seed before calling"):
        tg.compile(seeded)(tg.ones(3))
    tg.manual_seed(5)  # eagerly, and outside the compiled function, seeding works
    assert tg.equal(f(tg.ones(3)), f(tg.ones(3)))


def test_shape_errors_name_the_user_line():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x) + x  # MARK-shape

    with pytest.raises(tg.ShapeError, match=at("MARK-shape")):
        tg.compile(Bad())(tg.randn(2, 4))


def test_graph_locations_point_at_user_lines():
    def f(x, w):
        h = x @ w  # MARK-matmul
        return F.relu(h).sum()  # MARK-relu

    graph = tg.trace(f, tg.randn(2, 3), tg.randn(3, 4))
    by_op = {n.op: n.location for n in graph.nodes}
    assert by_op["matmul"].filename == __file__
    assert by_op["matmul"].lineno == line_of("MARK-matmul")
    assert by_op["relu"].lineno == line_of("MARK-relu")
