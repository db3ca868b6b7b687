"""Custom autograd Functions as PyTorch's tutorials write them:

- "polynomial_custom_function": ``LegendrePolynomial3`` (``ctx.save_for_backward``) fitting
  sin(x) with four scalar tensors updated by hand under ``no_grad``, compared by hand (the
  harness compares modules, and this program has none): eagerly, as a compiled step, and with
  PyTorch;
- "Extending torch.autograd": ``LinearFunction`` (``ctx.needs_input_grad``, an optional bias)
  inside a ``Linear`` module, through the harness; and the sort Function whose indices are
  ``ctx.mark_non_differentiable`` and whose backward uses ``index_add_``.
"""

import math

import numpy as np
import pytest
from harness import import_torch, run_port

import tracegrad as tg


def legendre(lib):
    class LegendrePolynomial3(lib.autograd.Function):
        """
        We can implement our own custom autograd Functions by subclassing
        torch.autograd.Function and implementing the forward and backward passes
        which operate on Tensors.
        """

        @staticmethod
        def forward(ctx, input):
            ctx.save_for_backward(input)
            return 0.5 * (5 * input**3 - 3 * input)

        @staticmethod
        def backward(ctx, grad_output):
            (input,) = ctx.saved_tensors
            return grad_output * 1.5 * (5 * input**2 - 1)

    return LegendrePolynomial3


def fit_sine(lib, steps, compiled=False):
    """The tutorial's loop (2000 points, lr 5e-6), ``steps`` iterations."""
    dtype = lib.float
    device = lib.device("cpu")
    x = lib.linspace(-math.pi, math.pi, 2000, device=device, dtype=dtype)
    y = lib.sin(x)
    a = lib.full((), 0.0, device=device, dtype=dtype, requires_grad=True)
    b = lib.full((), -1.0, device=device, dtype=dtype, requires_grad=True)
    c = lib.full((), 0.0, device=device, dtype=dtype, requires_grad=True)
    d = lib.full((), 0.3, device=device, dtype=dtype, requires_grad=True)
    learning_rate = 5e-6
    LegendrePolynomial3 = legendre(lib)

    def step(x, y):  # (the loop body; ``nonlocal`` because it is now a function's)
        nonlocal a, b, c, d
        P3 = LegendrePolynomial3.apply
        y_pred = a + b * P3(c + d * x)
        loss = (y_pred - y).pow(2).sum()
        loss.backward()
        with lib.no_grad():
            a -= learning_rate * a.grad
            b -= learning_rate * b.grad
            c -= learning_rate * c.grad
            d -= learning_rate * d.grad
            a.grad = None
            b.grad = None
            c.grad = None
            d.grad = None
        return loss

    run = tg.compile(step) if compiled else step
    losses = [run(x, y).item() for _ in range(steps)]
    return losses, [v.item() for v in (a, b, c, d)]


def test_legendre_polynomial_fit_compiled_and_torch_match_eager():
    losses, params = fit_sine(tg, 30)
    compiled_losses, compiled_params = fit_sine(tg, 30, compiled=True)
    np.testing.assert_allclose(compiled_losses, losses, rtol=1e-5)
    np.testing.assert_allclose(compiled_params, params, rtol=1e-5, atol=1e-7)
    assert losses[-1] < 0.7 * losses[0]
    torch = import_torch()
    if torch is not None:
        torch_losses, torch_params = fit_sine(torch, 30)
        np.testing.assert_allclose(losses, torch_losses, rtol=1e-4)
        np.testing.assert_allclose(params, torch_params, rtol=1e-4, atol=1e-6)


def linear_function(lib):
    class LinearFunction(lib.autograd.Function):
        # Note that forward, setup_context, and backward are @staticmethods
        @staticmethod
        def forward(ctx, input, weight, bias=None):
            ctx.save_for_backward(input, weight, bias)
            output = input.mm(weight.t())
            if bias is not None:
                output += bias.unsqueeze(0).expand_as(output)
            return output

        # This function has only a single output, so it gets only one gradient
        @staticmethod
        def backward(ctx, grad_output):
            input, weight, bias = ctx.saved_tensors
            grad_input = grad_weight = grad_bias = None
            # These needs_input_grad checks are optional and there only to
            # improve efficiency.
            if ctx.needs_input_grad[0]:
                grad_input = grad_output.mm(weight)
            if ctx.needs_input_grad[1]:
                grad_weight = grad_output.t().mm(input)
            if bias is not None and ctx.needs_input_grad[2]:
                grad_bias = grad_output.sum(0)
            return grad_input, grad_weight, grad_bias

    return LinearFunction


def linear_module(lib):
    nn = lib.nn
    LinearFunction = linear_function(lib)

    class Linear(nn.Module):
        def __init__(self, input_features, output_features, bias=True):
            super().__init__()
            self.input_features = input_features
            self.output_features = output_features
            self.weight = nn.Parameter(lib.empty(output_features, input_features))
            if bias:
                self.bias = nn.Parameter(lib.empty(output_features))
            else:
                self.register_parameter("bias", None)
            self.weight.data.uniform_(-0.1, 0.1)
            if self.bias is not None:
                self.bias.data.uniform_(-0.1, 0.1)

        def forward(self, input):
            return LinearFunction.apply(input, self.weight, self.bias)

    return Linear


def make_linear(lib):
    Linear = linear_module(lib)
    model = lib.nn.Sequential(Linear(5, 8), lib.nn.Tanh(), Linear(8, 3, bias=False))
    return {"model": model, "opt": lib.optim.SGD(model.parameters(), lr=0.2)}


def step_linear(lib, state, x, y):
    state["opt"].zero_grad()
    loss = lib.nn.functional.mse_loss(state["model"](x), y)
    loss.backward()
    state["opt"].step()
    return loss


def test_linear_function_module_through_the_harness():
    rng = np.random.default_rng(0)
    batches = [
        (
            rng.standard_normal((6, 5)).astype(np.float32),
            rng.standard_normal((6, 3)).astype(np.float32),
        )
        for _ in range(4)
    ]
    run_port(make_linear, step_linear, batches)


def test_needs_input_grad_tells_backward_which_gradients_to_compute():
    LinearFunction = linear_function(tg)
    seen = []

    class Recording(LinearFunction):
        @staticmethod
        def backward(ctx, grad_output):
            seen.append(ctx.needs_input_grad)
            return LinearFunction.backward(ctx, grad_output)

    x, w = tg.randn(4, 3), tg.randn(2, 3, requires_grad=True)
    Recording.apply(x, w, None).sum().backward()  # (as Linear passes its missing bias)
    assert seen == [(False, True, False)] and w.grad.shape == (2, 3)


def sort_function(lib):
    class Func(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            sorted, idx = x.sort()
            ctx.mark_non_differentiable(idx)
            ctx.save_for_backward(x, idx)
            return sorted, idx

        @staticmethod
        def backward(ctx, g1, g2):  # still need to accept g2
            x, idx = ctx.saved_tensors
            grad_input = lib.zeros_like(x, memory_format=lib.legacy_contiguous_format)
            grad_input.index_add_(0, idx, g1)
            return grad_input

    return Func


@pytest.mark.parametrize("compiled", [False, True])
def test_sort_function_with_non_differentiable_indices(compiled):
    values = np.array([0.3, -1.2, 2.5, 0.9, -0.4])
    weights = np.arange(1.0, 6.0)

    def loss(lib, x):
        sorted, idx = sort_function(lib).apply(x)
        assert not idx.requires_grad
        out = (sorted * lib.tensor(weights)).sum()
        out.backward()
        return out

    x = tg.tensor(values, requires_grad=True)
    (tg.compile(lambda x: loss(tg, x)) if compiled else lambda x: loss(tg, x))(x)
    # d/dx_i of sum_k w_k sorted_k: the weight of the place x_i sorts to
    expected = np.empty(5)
    expected[np.argsort(values)] = weights
    np.testing.assert_allclose(x.grad.numpy(), expected)
    torch = import_torch()
    if torch is not None:
        xt = torch.tensor(values, requires_grad=True)
        loss(torch, xt)
        np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy())
