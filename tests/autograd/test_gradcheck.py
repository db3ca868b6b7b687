"""gradcheck itself: passes on right gradients, reports the worst element on wrong ones."""

import pytest

import tracegrad as tg


class WrongGradient(tg.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x  # should be 2 * x


def test_gradcheck_passes_on_correct_gradients():
    x = tg.randn(3, 2, dtype=tg.float64, requires_grad=True)
    w = tg.randn(2, 4, dtype=tg.float64, requires_grad=True)
    assert tg.autograd.gradcheck(lambda a, b: (a @ b).tanh(), (x, w))


def test_gradcheck_reports_worst_element():
    x = tg.tensor([1.0, 3.0], dtype=tg.float64, requires_grad=True)
    with pytest.raises(tg.autograd.GradcheckError) as info:
        tg.autograd.gradcheck(WrongGradient.apply, (x,))
    message = str(info.value)
    assert "output 0 with respect to input 0" in message
    assert "input element 1" in message and "analytic 3" in message and "numerical 6" in message
    assert tg.autograd.gradcheck(WrongGradient.apply, (x,), raise_exception=False) is False


def test_gradcheck_wants_float64():
    with pytest.raises(tg.autograd.GradcheckError, match="float64"):
        tg.autograd.gradcheck(lambda a: a * 2, (tg.ones(2, requires_grad=True),))


def test_gradcheck_does_not_modify_inputs():
    x = tg.tensor([0.5, -0.5], dtype=tg.float64, requires_grad=True)
    tg.autograd.gradcheck(lambda a: a.exp(), (x,))
    assert x.tolist() == [0.5, -0.5] and x.grad is None


def test_gradgradcheck_checks_second_order():
    x = tg.randn(4, dtype=tg.float64, requires_grad=True)
    assert tg.autograd.gradgradcheck(lambda a: (a * a).sigmoid(), (x,))
