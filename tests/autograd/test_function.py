"""Custom autograd.Function: the user's backward is the one that runs."""

import numpy as np
import pytest

import tracegrad as tg


class StraightThroughSign(tg.autograd.Function):
    """sign() forward, identity backward: a derived gradient would be zero."""

    @staticmethod
    def forward(ctx, x):
        return x.sign()

    @staticmethod
    def backward(ctx, grad):
        return grad


class ScaledExp(tg.autograd.Function):
    """exp(x) * scale with a non-tensor argument and a saved output."""

    @staticmethod
    def forward(ctx, x, scale):
        out = x.exp() * scale
        ctx.save_for_backward(out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * out, None


class SplitProduct(tg.autograd.Function):
    """Two inputs, two outputs: (a * b, a + b)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b, a + b

    @staticmethod
    def backward(ctx, grad_prod, grad_sum):
        a, b = ctx.saved_tensors
        return grad_prod * b + grad_sum, grad_prod * a + grad_sum


def test_user_backward_replaces_the_derived_one():
    x = tg.tensor([-2.0, 0.5, 3.0], requires_grad=True)
    StraightThroughSign.apply(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def test_saved_tensors_and_non_tensor_arguments():
    x = tg.tensor([0.0, 1.0], dtype=tg.float64, requires_grad=True)
    y = ScaledExp.apply(x, 3.0)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 3.0 * np.exp([0.0, 1.0]))
    assert tg.autograd.gradcheck(lambda t: ScaledExp.apply(t, 2.0), (x,))


def test_several_inputs_and_outputs():
    a = tg.tensor([2.0], requires_grad=True)
    b = tg.tensor([5.0], requires_grad=True)
    prod, total = SplitProduct.apply(a, b)
    (prod * 2 + total).sum().backward()
    assert a.grad.tolist() == [2 * 5.0 + 1] and b.grad.tolist() == [2 * 2.0 + 1]


def test_unused_output_gets_zero_gradient():
    a = tg.tensor([2.0], requires_grad=True)
    b = tg.tensor([5.0], requires_grad=True)
    prod, _ = SplitProduct.apply(a, b)
    prod.sum().backward()
    assert a.grad.tolist() == [5.0]


def test_needs_input_grad():
    seen = {}

    class Probe(tg.autograd.Function):
        @staticmethod
        def forward(ctx, a, b, k):
            seen["needs"] = ctx.needs_input_grad
            return a * b

        @staticmethod
        def backward(ctx, grad):
            return grad, None, None

    Probe.apply(tg.ones(1, requires_grad=True), tg.ones(1), 3)
    assert seen["needs"] == (True, False, False)


def test_forward_runs_without_recording_and_output_is_connected():
    x = tg.ones(2, requires_grad=True)
    y = ScaledExp.apply(x, 1.0)
    assert y.requires_grad and "ScaledExp" in repr(y.grad_fn)


def test_modifying_a_saved_tensor_raises_naming_the_function():
    a = tg.ones(2, requires_grad=True)
    h = a * 1
    prod, _ = SplitProduct.apply(h, tg.ones(2))
    h.add_(1)
    with pytest.raises(RuntimeError, match="'SplitProduct'"):
        prod.sum().backward()


def test_wrong_number_of_gradients_is_reported():
    class Bad(tg.autograd.Function):
        @staticmethod
        def forward(ctx, a, b):
            return a * b

        @staticmethod
        def backward(ctx, grad):
            return (grad,)

    with pytest.raises(RuntimeError, match="expected 2"):
        Bad.apply(tg.ones(1, requires_grad=True), tg.ones(1)).sum().backward()


def test_wrong_gradient_shape_is_reported():
    class Bad(tg.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2

        @staticmethod
        def backward(ctx, grad):
            return tg.ones(5)

    with pytest.raises(ValueError, match=r"\(5,\).*\(2,\)"):
        Bad.apply(tg.ones(2, requires_grad=True)).sum().backward()


def test_double_backward_through_a_custom_function():
    class Cube(tg.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x * x

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * 3 * x * x

    x = tg.tensor(2.0, dtype=tg.float64, requires_grad=True)
    (g,) = tg.autograd.grad(Cube.apply(x), x, create_graph=True)
    (gg,) = tg.autograd.grad(g, x)
    assert g.item() == 12.0 and gg.item() == 12.0


class TrailingNones(tg.autograd.Function):
    """A backward returning more gradients than inputs, the extra ones None (PyTorch allows
    it); ``extra`` says what the extra gradient is."""

    @staticmethod
    def forward(ctx, x, extra=None):
        ctx.extra = extra
        return x * 3.0

    @staticmethod
    def backward(ctx, grad):
        return grad * 3.0, None, ctx.extra


def test_trailing_none_gradients_beyond_the_inputs_are_dropped_as_in_pytorch():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    TrailingNones.apply(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])
    compiled = tg.compile(lambda x: TrailingNones.apply(x))
    y = tg.tensor([1.0, 2.0], requires_grad=True)
    compiled(y).sum().backward()
    np.testing.assert_array_equal(y.grad.numpy(), [3.0, 3.0])


def test_an_extra_gradient_that_is_not_none_is_an_error():
    x = tg.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="incorrect number of gradients"):
        TrailingNones.apply(x, tg.ones(1)).sum().backward()
